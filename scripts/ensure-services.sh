#!/usr/bin/env bash
# Make sure Postgres and Redis answer on 127.0.0.1 (the tests' defaults): start them when they are
# installed but stopped, install them (apt-get) when missing; install chromium + chromium-driver if missing. Idempotent; used by .ci/run.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

apt_install() {
  echo "ensure-services: installing $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then su postgres -c "$(printf '%q ' "$@")"; else sudo -u postgres "$@"; fi
}

wait_for() {  # wait_for <name> <command...>
  local name=$1; shift
  for _ in $(seq 1 30); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "ensure-services: $name did not come up" >&2
  return 1
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "ensure-services: postgres is running"
  else
    if ! command -v pg_lsclusters >/dev/null; then apt_install postgresql; fi
    if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
      $SUDO pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -1)" main
    fi
    pg_lsclusters -h | while read -r version cluster _; do
      $SUDO pg_ctlcluster "$version" "$cluster" start || $SUDO service postgresql start
    done
    wait_for postgres pg_isready -q -h 127.0.0.1 -p 5432
  fi
  # The tests connect as postgres over TCP without a password: trust local TCP connections.
  if ! psql -h 127.0.0.1 -U postgres -w -tAc "SELECT 1" postgres >/dev/null 2>&1; then
    local hba
    hba=$(as_postgres psql -tAc "SHOW hba_file")
    echo "ensure-services: trusting 127.0.0.1 in $hba"
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    pg_lsclusters -h | while read -r version cluster _; do $SUDO pg_ctlcluster "$version" "$cluster" reload; done
    wait_for "postgres login" psql -h 127.0.0.1 -U postgres -w -tAc "SELECT 1" postgres
  fi
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 ping 2>/dev/null | grep -q PONG; then
    echo "ensure-services: redis is running"
    return
  fi
  if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for redis sh -c 'redis-cli -h 127.0.0.1 ping | grep -q PONG'
}

# The dashboard's browser test (tests/e2e/test_dashboard.py) drives Debian's headless chromium through
# its chromedriver; nothing downloads a browser at test time.
ensure_chromium() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "ensure-services: chromium and chromedriver are installed"
    return
  fi
  apt_install chromium chromium-driver
}

ensure_postgres
ensure_redis
ensure_chromium
