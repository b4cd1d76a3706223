#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests.
#
# Sourced (as scripts/test.sh does), it defines:
#   pg_install  installs Debian's PostgreSQL when no initdb is found (apt-get; as root, else sudo)
#   pg_start    initdb into a fresh temporary folder, starts the server on 127.0.0.1 at a free
#               port and exports SENDLATER_TEST_PG=postgres://postgres@127.0.0.1:PORT/postgres
#   pg_stop     stops it and deletes the folder (call it from an EXIT trap; safe to call twice)
# Run, it wraps one command:
#   scripts/pg.sh cargo test --test postgres_server
# starts a server, runs the command with SENDLATER_TEST_PG set, then stops the server and
# deletes its folder, also when the command fails or is interrupted; exits with its status.
#
# The server is for tests only: trust authentication on 127.0.0.1, no Unix socket. Commits are
# durable as in production (fsync=on, synchronous_commit=on, full_page_writes=on), with
# max_connections=300 (the suite opens many) and shared_buffers=128MB. PostgreSQL refuses to
# run as root: as root the server runs as the `postgres` system user (created when missing),
# otherwise as the current user. PGBIN picks the binaries (default: PostgreSQL 15's, else the
# newest installed).

pg_bin() {
  if [ -n "${PGBIN:-}" ]; then echo "$PGBIN"; return 0; fi
  if [ -x /usr/lib/postgresql/15/bin/initdb ]; then echo /usr/lib/postgresql/15/bin; return 0; fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || true
  echo "${newest:-/usr/lib/postgresql/15/bin}"
}

pg_install() {
  [ -x "$(pg_bin)/initdb" ] && return 0
  echo "installing PostgreSQL (the second store the test suite runs against)" >&2
  local as_root=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "PostgreSQL is missing and installing it needs root or sudo: install postgresql-15 (or set PGBIN)" >&2
      return 1
    }
    as_root="sudo"
  fi
  _pg_apt() {
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15 \
      || $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
  }
  # A fresh machine may have no package lists yet, or stale ones: update once, retry.
  _pg_apt || { $as_root env DEBIAN_FRONTEND=noninteractive apt-get update && _pg_apt; } || return 1
  [ -x "$(pg_bin)/initdb" ] || { echo "PostgreSQL installed but no initdb in $(pg_bin) (check PGBIN)" >&2; return 1; }
}

# Runs a command as the server's user: `postgres` when we are root, else ourselves.
_pg_as() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

_pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 40000))
}

pg_start() {
  local bin port url settings attempt
  bin=$(pg_bin)
  [ -x "$bin/initdb" ] || { echo "no PostgreSQL binaries in $bin (run pg_install, or set PGBIN)" >&2; return 1; }
  if [ "$(id -u)" -eq 0 ] && ! id -u postgres >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres || return 1
  fi
  PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/sendlater-pg.XXXXXX") || return 1
  [ "$(id -u)" -eq 0 ] && chown postgres: "$PG_TMP"
  _pg_as test -w "$PG_TMP" || {
    echo "$PG_TMP is not writable by the server's user (check the permissions of its parent folders, or set TMPDIR)" >&2
    return 1
  }
  # --no-sync: initdb's final flush is not needed for a server deleted after the run
  # (the server itself runs with fsync=on).
  _pg_as "$bin/initdb" -D "$PG_TMP/data" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync \
    >"$PG_TMP/initdb.log" 2>&1 || { cat "$PG_TMP/initdb.log" >&2; return 1; }
  cat >>"$PG_TMP/data/postgresql.conf" <<EOF

# --- throwaway test server (scripts/pg.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
shared_buffers = 128MB
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
  # The free port can be taken between finding it and binding it: then try another.
  for attempt in 1 2 3; do
    port=$(_pg_free_port)
    _pg_as "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -o "-p $port" -w -t 60 start >/dev/null && break
    if [ "$attempt" -eq 3 ] || ! grep -q "could not bind" "$PG_TMP/server.log" 2>/dev/null; then
      echo "PostgreSQL failed to start; last lines of its log:" >&2
      tail -n 20 "$PG_TMP/server.log" >&2 || true
      return 1
    fi
  done
  url="postgres://postgres@127.0.0.1:$port/postgres"
  for _ in $(seq 1 300); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
    sleep 0.1
  done
  settings=$("$bin/psql" "$url" -XAtc "select string_agg(name || '=' || current_setting(name), ' ' order by name)
      from pg_settings where name in ('fsync', 'synchronous_commit', 'full_page_writes', 'max_connections', 'shared_buffers')") || {
    echo "PostgreSQL started but does not answer at $url; last lines of its log:" >&2
    tail -n 20 "$PG_TMP/server.log" >&2 || true
    return 1
  }
  case " $settings " in
    *" fsync=on "*" synchronous_commit=on "*) ;;
    *) echo "the test PostgreSQL is not durable: $settings" >&2; return 1 ;;
  esac
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') for the tests at $url (in $PG_TMP; $settings)" >&2
  export SENDLATER_TEST_PG="$url"
}

# In an EXIT trap, `return` without a status would return the script's exit status: every
# return here gives one.
pg_stop() {
  [ -n "${PG_TMP:-}" ] && [ -d "$PG_TMP" ] || return 0
  local bin pid
  bin=$(pg_bin)
  if [ -s "$PG_TMP/data/postmaster.pid" ]; then
    # Immediate: the data is deleted next, nothing needs a shutdown checkpoint.
    if ! _pg_as "$bin/pg_ctl" -D "$PG_TMP/data" -m immediate -w -t 30 stop >/dev/null 2>&1; then
      pid=$(head -n 1 "$PG_TMP/data/postmaster.pid" 2>/dev/null || true)
      [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$PG_TMP"
  echo "PostgreSQL for the tests stopped, $PG_TMP deleted" >&2
  PG_TMP=""
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  [ $# -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...]  (runs COMMAND with SENDLATER_TEST_PG set)" >&2; exit 2; }
  pg_install
  trap 'set +e; pg_stop' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  pg_start
  status=0
  "$@" || status=$?
  exit "$status"
fi
