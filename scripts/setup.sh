#!/usr/bin/env bash
# Idempotent setup on a fresh Debian 12 machine: Python venv with pinned deps in ./.venv, and (with --system)
# the Debian packages the test suite needs (MariaDB server for the DB tests, Chromium for the browser tests,
# prometheus for `promtool check` of the alert rules).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--system" ]; then
  need=()
  command -v mariadbd >/dev/null 2>&1 || need+=(mariadb-server mariadb-client)
  command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[test]"
  rm -f .venv/.installed-*; touch "$stamp"
fi
