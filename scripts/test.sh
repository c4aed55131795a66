#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (root for integration).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not integration" -k store
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== ruff"; uv run --frozen ruff check src tests bench
echo "== ruff format"; uv run --frozen ruff format --check src tests bench
echo "== mypy"; uv run --frozen mypy
echo "== import arrows (docs/architecture.md)"; uv run --frozen lint-imports --no-cache
echo "== pytest"; uv run --frozen pytest "$@"
