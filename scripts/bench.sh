#!/usr/bin/env bash
# Data-path benchmark (docs/benchmark.md): direct TCP vs Ketch ambient vs Envoy HBONE vs
# Envoy mTLS, interleaved rounds on a netns fabric. Needs root. Arguments go to the driver,
# e.g. scripts/bench.sh --quick, scripts/bench.sh --rounds 7 --seconds 15.
set -euo pipefail
cd "$(dirname "$0")/.."
KETCH_WITH_BENCH=1 bash scripts/install.sh
exec uv run --frozen python bench/ambient.py "$@"
