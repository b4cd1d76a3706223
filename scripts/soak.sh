#!/usr/bin/env bash
# Kill/restart soak: N cycles (default 20) of load, SIGKILL, restart on the same file,
# invariant checks and PRAGMA integrity_check. Prints `RESULT soak cycles=... acked=...
# lost=... duplicates=...`.
set -euo pipefail
cd "$(dirname "$0")/.."
# `scripts/soak.sh N postgres://USER@HOST:PORT/DB`: the same on PostgreSQL (a fresh
# database on that server per run; the server is the caller's).
if [ -n "${2:-}" ]; then
  export SOAK_STORE=postgres SENDLATER_TEST_PG="$2"
fi
SOAK_CYCLES="${1:-20}" cargo test --release --test crash -- --ignored --exact soak --nocapture
