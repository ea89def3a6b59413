# Sourced by the other tools: makes .venv and installs the project into it.
# Re-installs only when pyproject.toml changes (a stamp holds its hash).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# LLMOS_VENV=DIR installs into a shared venv instead. The install is editable,
# so afterwards every user of DIR imports llmos_jax from *this* checkout (e.g.
# a CI clone) until another checkout installs itself there.
VENV="${LLMOS_VENV:-$REPO_ROOT/.venv}"
EXTRAS="${1:-all,test}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[llmos] creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.llmos-installed-$EXTRAS"
WANT="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[llmos] installing llmos_jax[$EXTRAS] (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$REPO_ROOT[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
