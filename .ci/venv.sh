# Sourced by .ci/demo and .ci/test: make .venv with the package installed.
#   $1: the extras to install, e.g. "[server]" or "[server,test,bench]"
ensure_venv() {
  local extras="${1:-}"
  local py="${PYTHON:-python3}"
  if ! command -v "$py" >/dev/null; then
    echo "installing python3"; ${SUDO:-} apt-get update -q && ${SUDO:-} apt-get install -y -q python3 python3-venv
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$py" -m venv .venv 2>/dev/null; then
      rm -rf .venv
      echo "installing python3-venv"; ${SUDO:-} apt-get update -q && ${SUDO:-} apt-get install -y -q python3-venv
      "$py" -m venv .venv
    fi
  fi
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".${extras}"
}
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
