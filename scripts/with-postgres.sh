#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server on 127.0.0.1, exported as
# TIER_ML_TEST_POSTGRES_URL, so the store tests run against a real server.
# If TIER_ML_TEST_POSTGRES_URL is already set, the command runs as it is.
# PostgreSQL comes from the machine (Debian's postgresql package); when it is
# missing and we are root, it is installed with apt-get.
set -euo pipefail

if [ -n "${TIER_ML_TEST_POSTGRES_URL:-}" ]; then
  exec "$@"
fi

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
PG_BIN="$(find_bin)"
if [ -z "$PG_BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "with-postgres: installing PostgreSQL (apt-get install postgresql)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PG_BIN="$(find_bin)"
fi
if [ -z "$PG_BIN" ]; then
  echo "with-postgres: no PostgreSQL found; PostgreSQL tests will be skipped" >&2
  exec "$@"
fi

PORT="${TIER_ML_PG_PORT:-55432}"
if [ -z "${TIER_ML_PG_PORT:-}" ] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  # another run holds the default port: take a free one
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
DATA="$(mktemp -d /tmp/tier-ml-pg.XXXXXX)"
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$DATA"
  RUN_AS=(runuser -u postgres --)
fi
"${RUN_AS[@]}" "$PG_BIN/initdb" -D "$DATA/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$DATA/data" -l "$DATA/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off -c max_connections=200" start >/dev/null
cleanup() {
  "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$DATA/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DATA"
}
trap cleanup EXIT
"$PG_BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE tier_ml_test" >/dev/null
export TIER_ML_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/tier_ml_test"
echo "with-postgres: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT" >&2
"$@"
