#!/usr/bin/env bash
# The README's test command: set up everything (apt packages, venv) and run the whole suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
exec .venv/bin/python -m pytest -q "$@"
