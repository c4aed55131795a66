#!/usr/bin/env bash
# Set-up and main job: installs everything, then `ketch up` brings up a local cluster with the
# ambient mesh and the sample app (two nodes as network namespaces on this machine).
# Arguments go to `ketch up`, e.g. `scripts/up.sh --nodes 3 --no-sample`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh  # says what it did with the global `ketch` link
if [ "$(command -v ketch || true)" -ef .venv/bin/ketch ]; then
  use=ketch
else
  use="$PWD/.venv/bin/ketch"
fi
.venv/bin/ketch version
if [ "$(id -u)" -ne 0 ]; then
  echo "ketch is installed ($use). 'ketch up' needs root (it creates network namespaces):" >&2
  echo "  sudo $use up" >&2
  exit 0
fi
exec .venv/bin/ketch up "$@"
