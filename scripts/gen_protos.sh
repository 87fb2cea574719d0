#!/usr/bin/env bash
# Generates cim/proto/v1/*_pb2*.py, cim/proto/admin/v1/*_pb2*.py and
# cim/proto/internal/v1/*_pb2*.py (and .pyi stubs) from protos/v1/*.proto
# (public, package cim.v1), protos/admin/v1/*.proto (the route's admin API,
# package cim.admin.v1: public, behind admin keys) and
# protos/internal/v1/*.proto (cluster-internal, package cim.internal.v1).
# The -Icim/proto=protos mapping names the files cim/proto/v1/x.proto, so the
# generated code imports as cim.proto.v1.x_pb2 and other languages can use the
# same mapping (or a directory laid out as cim/proto -> protos).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PYTHON"):$PATH"  # protoc-gen-mypy lives beside the interpreter
out=cim/proto
rm -f "$out"/v1/*_pb2*.py "$out"/v1/*_pb2*.pyi "$out"/v1/described.binpb "$out"/internal/v1/*_pb2*.py "$out"/internal/v1/*_pb2*.pyi "$out"/admin/v1/*_pb2*.py "$out"/admin/v1/*_pb2*.pyi
mkdir -p "$out/v1" "$out/admin/v1" "$out/internal/v1"
"$PYTHON" -m grpc_tools.protoc \
  -Icim/proto=protos \
  --python_out=. --grpc_python_out=. \
  --mypy_out=. --mypy_grpc_out=. \
  protos/v1/*.proto protos/admin/v1/*.proto protos/internal/v1/*.proto
# The public protos with their comments, for server reflection (grpcurl
# describe shows them); generated code carries no comments. The admin API is
# public too (reflection lists it: admins use grpcurl), so it is described here.
"$PYTHON" -m grpc_tools.protoc \
  -Icim/proto=protos \
  --include_source_info \
  --descriptor_set_out="$out/v1/described.binpb" \
  protos/v1/*.proto protos/admin/v1/*.proto
touch "$out/__init__.py" "$out/v1/__init__.py" "$out/admin/__init__.py" "$out/admin/v1/__init__.py" \
  "$out/internal/__init__.py" "$out/internal/v1/__init__.py"
echo "generated: $(ls "$out"/v1/*_pb2*.py "$out"/admin/v1/*_pb2*.py "$out"/internal/v1/*_pb2*.py | tr '\n' ' ')"
