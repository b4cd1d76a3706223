#!/usr/bin/env bash
# scripts/bench-pg.sh [ROUNDS] [N]   (default 3 rounds, N=100000)
#
# sendlater on PostgreSQL against pg-boss on the SAME PostgreSQL server, back to back:
# starts one throwaway PostgreSQL 15 with the pg-boss harness's durable settings
# (../shared/peers/pg-boss/start-pg.sh: fsync, synchronous_commit and full_page_writes
# on), then ROUNDS times: pg-boss's bench.mjs (N jobs), then sendlater's e2e bench
# (--quick: schedule-unary, schedule-batch, dispatch, cancel) with E2E_DB pointing at the
# same server. `uptime` is printed before every run. RESULT lines go to stdout.
# Needs a release build: cargo build --release --bin sendlater && cargo bench --bench e2e --no-run
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-100000}
peer=${PGBOSS_DIR:-../shared/peers/pg-boss}
[ -d "$peer" ] || { echo "no pg-boss harness at $peer (set PGBOSS_DIR)" >&2; exit 2; }
bench=$(ls -t target/release/deps/e2e-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -x "$bench" ] || { echo "no e2e bench binary: cargo bench --bench e2e --no-run" >&2; exit 2; }

if [ ! -d "$peer/node_modules/pg-boss" ]; then
  (cd "$peer" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-pg.XXXXXX")
chmod 755 "$tmp"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { "$peer/stop-pg.sh" "$tmp/data" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT
url=$("$peer/start-pg.sh" "$tmp/data" "$port")
echo "PostgreSQL: $url" >&2
for r in $(seq 1 "$rounds"); do
  echo "== round $r: pg-boss; uptime: $(uptime)"
  node "$peer/bench.mjs" --url "$url" --n "$n" | grep '^RESULT'
  echo "== round $r: sendlater; uptime: $(uptime)"
  E2E_DB=$url "$bench" --quick schedule-unary schedule-batch dispatch cancel | grep '^RESULT'
done
echo "== end; uptime: $(uptime)"
