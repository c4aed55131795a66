#!/usr/bin/env bash
# Regenerate Python code and mypy stubs for Ketch's protos into src/ketch/proto/gen/.
# The generated code is committed; run this after editing any .proto under src/ketch/proto.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=src/ketch/proto
OUT=$SRC/gen
rm -rf "$OUT"
mkdir -p "$OUT"
mapfile -t PROTOS < <(cd "$SRC" && find . -path ./gen -prune -o -name '*.proto' -print | sed 's|^\./||' | sort)
uv run --frozen python -m grpc_tools.protoc -I "$SRC" \
    --python_out="$OUT" --grpc_python_out="$OUT" \
    --mypy_out="$OUT" --mypy_grpc_out="$OUT" "${PROTOS[@]}"
# protoc writes imports relative to the include root ("from istio.v1.auth import ca_pb2");
# make them absolute inside this package.
find "$OUT" -name '*.py' -o -name '*.pyi' | while read -r f; do
    sed -i -E \
        -e 's/^from (istio|ketch)\.v1(\.[a-z.]+)? import /from ketch.proto.gen.\1.v1\2 import /' \
        -e 's/^from istio\.(workload|security) import /from ketch.proto.gen.istio.\1 import /' \
        "$f"
done
find "$OUT" -type d -exec touch {}/__init__.py \;
echo "generated: $(find "$OUT" -name '*_pb2*.py' | sort | tr '\n' ' ')"
