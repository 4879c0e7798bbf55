#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine too: starts PostgreSQL if it is installed but
# down, installs it with apt if it is missing (and we may), makes sure the test database and
# account work over TCP, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

export HUB_TEST_PG="${HUB_TEST_PG:-postgres://postgres:postgres@127.0.0.1:5432/test}"
PG_SERVER="${HUB_TEST_PG%/*}"

log() { printf '[test.sh] %s\n' "$*" >&2; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else sudo -n -u postgres sh -c "$*"; fi
}

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing $*, and cannot install it (not root, or no apt-get)"; exit 1
  fi
  log "installing $* with apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null && ! command -v pg_isready >/dev/null; then
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$ver" ] || { apt_install postgresql; ver=$(ls /etc/postgresql | sort -V | tail -n 1); }
    log "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
    pg_isready -h 127.0.0.1 -p 5432 -q || { log "PostgreSQL did not start"; exit 1; }
  fi
  # Trust auth (these machines) ignores the password; a stock install wants one over TCP.
  if ! psql "$PG_SERVER/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    log "setting the postgres account's password for TCP logins"
    as_postgres "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
  if [ "$(psql "$PG_SERVER/postgres" -Atqc "select 1 from pg_database where datname = 'test'")" != 1 ]; then
    psql "$PG_SERVER/postgres" -qc 'CREATE DATABASE test'
  fi
  # Databases left by tests that failed in an earlier run.
  for db in $(psql "$PG_SERVER/postgres" -Atqc "select datname from pg_database where datname like 'po_test_%'"); do
    psql "$PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  done
}

ensure_postgres
log "PostgreSQL ready at ${PG_SERVER#*@}"
log_file=$(mktemp)
trap 'rm -f "$log_file"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log_file"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log_file"
exit "$status"
