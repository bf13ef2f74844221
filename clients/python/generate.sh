#!/usr/bin/env bash
# Generates the Python protobuf and gRPC modules of tandem's public API from proto/ into the
# package (src/tandem_client/_proto/tandem/v1/), with grpcio-tools. The generated files are not
# committed; `pip install clients/python` runs this script itself (setup.py), so run it by hand
# only for a checkout used in place (PYTHONPATH=clients/python/src).
#
#   clients/python/generate.sh            # with python3 (needs grpcio-tools)
#   PYTHON=/path/to/python clients/python/generate.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
out=$here/src
pkg=$out/tandem_client/_proto

if ! "$python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "generate.sh: $python has no grpc_tools; pip install grpcio-tools" >&2
  exit 1
fi

rm -rf "$pkg"
mkdir -p "$pkg"
# NOTE: the virtual include path (tandem_client/_proto=...) puts the modules inside the package
# and makes the gRPC module import `tandem_client._proto.tandem.v1.generation_pb2`, not a
# top-level `tandem` package. The proto package (tandem.v1) and so the wire format are unchanged.
cd "$root"
"$python" -m grpc_tools.protoc \
  -I "tandem_client/_proto=proto" \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  proto/tandem/v1/generation.proto
for dir in "$pkg" "$pkg/tandem" "$pkg/tandem/v1"; do
  : >"$dir/__init__.py"
done
