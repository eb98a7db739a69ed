#!/usr/bin/env bash
# Installs what the local demo and the tests need, idempotently:
# - a Python venv ($MILVUS_DR_VENV, default <repo>/.venv) with the PyPI
#   `milvus` 2.3.5 server package (a real Milvus standalone server) and
#   pyarrow (the tests read backups with it), pymilvus (the front door
#   tests use it),
# - the server's binaries extracted once into the venv.
# A second run does nothing and takes well under 2 s.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="${MILVUS_DR_VENV:-$root/.venv}"
MILVUS_VERSION=2.3.5

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v curl >/dev/null || need_apt+=(curl)
# BIND 9: the authoritative DNS server the agents switch by RFC 2136 (tests
# and demo).
[ -x /usr/sbin/named ] || need_apt+=(bind9)
command -v dig >/dev/null || need_apt+=(bind9-dnsutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating the venv $venv"
  python3 -m venv "$venv"
fi
have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("milvus"))' 2>/dev/null || true)
if [ "$have" != "$MILVUS_VERSION" ]; then
  echo "setup: installing milvus==$MILVUS_VERSION into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "milvus==$MILVUS_VERSION"
else
  echo "setup: milvus $MILVUS_VERSION already installed in $venv"
fi

# pyarrow: the tests read backups' Parquet with an independent reader, as
# pandas, DuckDB or Spark users would.
PYARROW_VERSION=26.0.1
have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pyarrow"))' 2>/dev/null || true)
if [ "$have" != "$PYARROW_VERSION" ]; then
  echo "setup: installing pyarrow==$PYARROW_VERSION into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pyarrow==$PYARROW_VERSION"
fi

# pymilvus: the front door tests drive the agent's gRPC proxy with the
# official Python client, as applications would. 2.3.7 still imports
# pkg_resources (setuptools < 81) and its environs needs marshmallow 3:
# both pinned with it.
PYMILVUS_VERSION=2.3.7
have=$("$venv/bin/python" -W ignore -c 'import importlib.metadata as m, pymilvus; print(m.version("pymilvus"))' 2>/dev/null || true)
if [ "$have" != "$PYMILVUS_VERSION" ]; then
  echo "setup: installing pymilvus==$PYMILVUS_VERSION into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pymilvus==$PYMILVUS_VERSION" \
    "setuptools==80.9.0" "marshmallow==3.26.1"
fi

# moto: a local emulator of the Route 53 API, answering the real AWS SDK.
MOTO_VERSION=5.2.5
have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)
if [ "$have" != "$MOTO_VERSION" ]; then
  echo "setup: installing moto[server]==$MOTO_VERSION into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# Extract the server binaries now (not in the middle of a test run).
"$venv/bin/python" - <<'PY'
import os, milvus
base = os.path.join(os.path.dirname(os.path.abspath(milvus.__file__)), "_extracted")
milvus._initialize_data_files(base)
print("setup: Milvus server binaries ready in", os.path.join(base, "bin"))
PY
