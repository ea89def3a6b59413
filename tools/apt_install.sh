# Sourced by tools/browser.sh and tools/promtool.sh: installs Debian packages that tests need.
# apt_install "WHAT FOR" PACKAGE...: quiet unless it installs; root (CI) or sudo; tries the
# package lists as they are first and runs `apt-get update` only if that fails.
apt_install() {
  local purpose="$1"
  shift
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[llmos] no apt-get to install $* ($purpose): install them another way" >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "[llmos] installing $* with apt-get ($purpose)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}
