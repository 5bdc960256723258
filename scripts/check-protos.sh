#!/usr/bin/env bash
# Regenerate the protobuf code into a scratch directory and fail if it differs from what is
# committed under controlplane/v1 (flower's dev/check-protos.sh, etcd's genproto.sh).
set -euo pipefail
python=${1:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$python" -m grpc_tools.protoc -Iproto --python_out="$scratch" --grpc_python_out="$scratch" --pyi_out="$scratch" proto/controlplane/v1/*.proto
status=0
for generated in "$scratch"/controlplane/v1/*; do
  committed=controlplane/v1/$(basename "$generated")
  if ! cmp -s "$generated" "$committed"; then
    echo "generated code is stale: $committed differs from proto/ (run 'make proto')" >&2
    status=1
  fi
done
for committed in controlplane/v1/*_pb2*.py*; do
  [ -e "$scratch/controlplane/v1/$(basename "$committed")" ] || { echo "$committed has no .proto any more" >&2; status=1; }
done
# The blocking SDK's domain methods are generated from the asyncio ones (make sdk).
"$python" scripts/unasync.py "$scratch/_api_sync.py"
"$(dirname "$python")/ruff" format --stdin-filename controlplane/client/_api_sync.py - \
  <"$scratch/_api_sync.py" >"$scratch/_api_sync.formatted.py"
if ! cmp -s "$scratch/_api_sync.formatted.py" controlplane/client/_api_sync.py; then
  echo "controlplane/client/_api_sync.py is stale: it differs from what scripts/unasync.py makes of _api_async.py (run 'make sdk')" >&2
  status=1
fi
exit $status
