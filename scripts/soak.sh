#!/usr/bin/env bash
# Kill/restart soak: N cycles (default 20) of load, SIGKILL, restart on the same file,
# invariant checks and PRAGMA integrity_check. Prints `RESULT soak cycles=... acked=...
# lost=... duplicates=...`.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_CYCLES="${1:-20}" cargo test --release --test crash -- --ignored --exact soak --nocapture
