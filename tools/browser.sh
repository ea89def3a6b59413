#!/usr/bin/env bash
# Installs a headless browser for tests/test_serving_playground.py: Debian's `chromium`
# and `chromium-driver` (the matching chromedriver), only when missing.
# Ubuntu's apt `chromium-browser` is a snap shim that does not run in containers, so on
# Ubuntu install Debian's packages another way or set CHROMIUM/CHROMEDRIVER to binaries.
set -euo pipefail
if command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1 && command -v "${CHROMEDRIVER:-chromedriver}" >/dev/null 2>&1; then
  exit 0
fi
source "$(dirname "$0")/apt_install.sh"
apt_install "headless browser tests; or set CHROMIUM and CHROMEDRIVER to their paths" \
  chromium chromium-driver
