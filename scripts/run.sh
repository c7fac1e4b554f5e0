#!/usr/bin/env bash
# The README's main command: set up (venv + pinned deps), then run broker (embedded), schema, relay and worker.
# Pass --demo for the webhook receiver + demo triggers. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/smartflow up "$@"
