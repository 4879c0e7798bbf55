#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine too: starts PostgreSQL and RabbitMQ if they
# are installed but down, installs them with apt if they are missing (and we may), makes sure
# the test database and account work over TCP, runs an SQS-compatible server (moto, from PyPI,
# in a virtual environment of its own) on 127.0.0.1:4566, checks that hub-worker builds without
# each transport feature, then runs every test of the workspace (examples included).
set -euo pipefail
cd "$(dirname "$0")/.."

export HUB_TEST_PG="${HUB_TEST_PG:-postgres://postgres:postgres@127.0.0.1:5432/test}"
PG_SERVER="${HUB_TEST_PG%/*}"
export HUB_TEST_AMQP="${HUB_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export HUB_TEST_SQS="${HUB_TEST_SQS:-http://127.0.0.1:4566}"
MOTO_VENV="${MOTO_VENV:-$PWD/.venv/moto}"

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

ensure_python_tools() {
  if [ ! -x "$MOTO_VENV/bin/moto_server" ] || [ ! -x "$MOTO_VENV/bin/openapi-spec-validator" ]; then
    log "installing moto[server] and openapi-spec-validator into $MOTO_VENV"
    python3 -m venv "$MOTO_VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$MOTO_VENV"; }
    "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]' openapi-spec-validator
  fi
  export HUB_TEST_OPENAPI_VALIDATOR="$MOTO_VENV/bin/openapi-spec-validator"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  return 1
}

ensure_rabbitmq() {
  port_open 5672 && return
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 90 || { log "RabbitMQ did not start"; exit 1; }
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_moto() {
  port_open 4566 && return
  log "starting moto_server on 127.0.0.1:4566"
  mkdir -p target
  nohup "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p 4566 >target/moto.log 2>&1 &
  MOTO_PID=$!
  wait_port 4566 60 || { log "moto did not start (target/moto.log)"; exit 1; }
}

ensure_postgres
log "PostgreSQL ready at ${PG_SERVER#*@}"
ensure_rabbitmq
log "RabbitMQ ready on 127.0.0.1:5672"
ensure_python_tools
ensure_moto
log "SQS-compatible server ready at $HUB_TEST_SQS"
log_file=$(mktemp)
trap 'rm -f "$log_file"; [ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null; true' EXIT
# The transports and the HTTPS server are cargo features; the main run below builds them all,
# so a cfg mistake in a build without one would pass unseen. Check the combinations an embedder
# picks, and run the library's own tests with none (they test what a missing feature refuses).
log "cargo test -p hub-worker --no-default-features --lib"
cargo test -p hub-worker --no-default-features --lib --locked --quiet
for features in "--features rabbitmq" "--features sqs" "--features tls"; do
  log "cargo check -p hub-worker --no-default-features $features"
  # shellcheck disable=SC2086 # $features is two words on purpose
  cargo check -p hub-worker --no-default-features $features --locked --quiet
done
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log_file"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log_file"
exit "$status"
