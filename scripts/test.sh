#!/usr/bin/env bash
# Sets up .venv (pinned torch CPU wheel and the test tools) and runs every test tier:
# unit, tiny models vs transformers, real models vs llama.cpp (models are pulled on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check ember tests benchmarks
.venv/bin/mypy ember
exec .venv/bin/python -m pytest -q "$@"
