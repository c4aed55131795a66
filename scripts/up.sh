#!/usr/bin/env bash
# Set-up and main job: installs everything, then leaves `ketch` ready to use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "ketch is ready: try 'ketch apply -f examples/bookinfo.yaml' then 'ketch get all -A'"
.venv/bin/ketch version
