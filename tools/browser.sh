#!/usr/bin/env bash
# Installs a headless browser for tests/test_serving_playground.py: Debian's `chromium`
# and `chromium-driver` (the matching chromedriver), with apt-get, only when missing.
# Quiet unless it installs. Needs root (CI runs as root) or sudo.
# Ubuntu's apt `chromium-browser` is a snap shim that does not run in containers, so on
# Ubuntu install Debian's packages another way or set CHROMIUM/CHROMEDRIVER to binaries.
set -euo pipefail
if command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1 && command -v "${CHROMEDRIVER:-chromedriver}" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[llmos] no chromium/chromedriver and no apt-get: install chromium and its chromedriver," \
       "or set CHROMIUM and CHROMEDRIVER to their paths (tests/test_serving_playground.py needs them)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "[llmos] installing chromium and chromium-driver with apt-get (headless browser tests)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
