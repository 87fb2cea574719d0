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
if [ ! -f "$gen" ] || [ ! -f cim/proto/internal/v1/route_internal_pb2.py ] ||
  [ ! -f cim/proto/admin/v1/admin_pb2.py ] ||
  [ ! -f cim/proto/v1/described.binpb ] || [ -n "$(find protos -name '*.proto' -newer "$gen")" ]; then
  ./scripts/gen_protos.sh
fi

# `bootstrap.sh test`: also what the test suite runs for real (Redis, ZooKeeper
# with a JRE, openssl for the TLS tests' certificates, the Node.js example's modules).
if [ "${1:-}" = test ]; then
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
  command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    # Debian's npm package conflicts with an installed Node.js: never install it here.
    echo "bootstrap: the Node.js example's tests need node and npm (Node.js >= 18 from nodejs.org or your distribution's nodejs + npm)" >&2
    exit 1
  fi
  lock=examples/node/package-lock.json
  if [ -f "$lock" ] && { [ ! -d examples/node/node_modules ] || [ "$lock" -nt examples/node/node_modules ]; }; then
    (cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
    touch examples/node/node_modules
  fi
fi
