#!/usr/bin/env bash
# Private throwaway MariaDB on 127.0.0.1 (no system state): scripts/mariadb.sh start|stop|url DIR PORT
# Creates database `smartflow` and user app/secret. Needs the Debian packages mariadb-server + mariadb-client
# (scripts/setup.sh installs them). Start takes about 2 s the first time (install-db), 0.2 s after.
set -euo pipefail
cmd=${1:?start|stop|url}; dir=$(realpath -m "${2:-./var/mysql}"); port=${3:-13306}
sock="$dir/run/mysqld.sock"
case "$cmd" in
  start)
    mkdir -p "$dir/data" "$dir/run"
    if [ ! -d "$dir/data/mysql" ]; then
      mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1
    fi
    if ! mariadb-admin --no-defaults --socket="$sock" -uroot ping >/dev/null 2>&1; then
      nohup mariadbd --no-defaults --datadir="$dir/data" --socket="$sock" --port="$port" \
        --bind-address=127.0.0.1 --pid-file="$dir/run/mysqld.pid" --user=root \
        --log-error="$dir/error.log" --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 \
        --max-connections=500 --skip-name-resolve >/dev/null 2>&1 &
      for _ in $(seq 1 300); do
        mariadb-admin --no-defaults --socket="$sock" -uroot ping >/dev/null 2>&1 && break; sleep 0.1
      done
    fi
    mariadb --no-defaults --socket="$sock" -uroot -e "
      CREATE DATABASE IF NOT EXISTS smartflow CHARACTER SET utf8mb4;
      CREATE USER IF NOT EXISTS 'app'@'127.0.0.1' IDENTIFIED BY 'secret';
      CREATE USER IF NOT EXISTS 'app'@'localhost' IDENTIFIED BY 'secret';
      GRANT ALL ON *.* TO 'app'@'127.0.0.1'; GRANT ALL ON *.* TO 'app'@'localhost';"
    echo "mysql+aiomysql://app:secret@127.0.0.1:$port/smartflow?charset=utf8mb4"
    ;;
  stop)
    mariadb-admin --no-defaults --socket="$sock" -uroot shutdown >/dev/null 2>&1 || true ;;
  url)
    echo "mysql+aiomysql://app:secret@127.0.0.1:$port/smartflow?charset=utf8mb4" ;;
  *) echo "usage: $0 start|stop|url DIR PORT" >&2; exit 2 ;;
esac
