#!/usr/bin/env bash
# Set-up and main job: installs everything, then leaves `ketch` ready to use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh  # says what it did with the global `ketch` link
if [ "$(command -v ketch || true)" -ef .venv/bin/ketch ]; then
  use=ketch
else
  use="$PWD/.venv/bin/ketch"
fi
echo "ketch is ready: try '$use apply -f examples/bookinfo.yaml' then '$use get all -A'"
.venv/bin/ketch version
