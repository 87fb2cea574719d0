#!/usr/bin/env bash
# Sets up everything `make run` and `make test` need, idempotently:
# a Python >= 3.11 with venv (installed with apt-get when root on Debian),
# the .venv with cim and its dev tools, and the generated protobuf code.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

have_python() {
  command -v "$PYTHON" >/dev/null 2>&1 &&
    "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing $* with apt-get"
    if [ -z "${CIM_APT_UPDATED:-}" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -q
      export CIM_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
  else
    echo "bootstrap: please install: $* (e.g. sudo apt-get install $*)" >&2
    exit 1
  fi
}

if ! have_python; then
  apt_install python3 python3-venv python3-pip
  have_python || { echo "bootstrap: cim needs Python >= 3.11 with venv" >&2; exit 1; }
fi

stamp=.venv/.cim-installed
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

gen=cim/proto/v1/chat_pb2.py
if [ ! -f "$gen" ] || [ -n "$(find protos -name '*.proto' -newer "$gen")" ]; then
  ./scripts/gen_protos.sh
fi
