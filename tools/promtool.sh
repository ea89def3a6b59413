#!/usr/bin/env bash
# Installs `promtool` for tests/test_deploy_monitoring.py (checks and unit-tests the
# Prometheus alerting rules in deploy/monitoring/): Debian's `prometheus` package, with
# apt-get, only when promtool is missing. Quiet unless it installs. Needs root (CI runs as
# root) or sudo. Set PROMTOOL to use another binary.
set -euo pipefail
if command -v "${PROMTOOL:-promtool}" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[llmos] no promtool and no apt-get: install Prometheus's promtool or set PROMTOOL" \
       "to its path (tests/test_deploy_monitoring.py needs it)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "[llmos] installing prometheus (for promtool) with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
