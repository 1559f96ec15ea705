#!/usr/bin/env bash
# Sets up .venv (pinned torch CPU wheel and the test tools) and runs every test tier:
# unit, tiny models vs transformers, real models vs llama.cpp (models are pulled on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
# The chat page is tested in Debian's headless Chromium (tests skip, saying why, without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium; the chat-page tests will be skipped" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check ember tests benchmarks
.venv/bin/mypy ember
exec .venv/bin/python -m pytest -q "$@"
