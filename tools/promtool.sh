#!/usr/bin/env bash
# Installs `promtool` for tests/test_deploy_monitoring.py (checks and unit-tests the
# Prometheus alerting rules in deploy/monitoring/): Debian's `prometheus` package, only
# when promtool is missing. Set PROMTOOL to use another binary.
set -euo pipefail
if command -v "${PROMTOOL:-promtool}" >/dev/null 2>&1; then
  exit 0
fi
source "$(dirname "$0")/apt_install.sh"
apt_install "promtool for tests/test_deploy_monitoring.py; or set PROMTOOL to its path" prometheus
