#!/usr/bin/env bash
# scripts/bench-nodes.sh [ROUNDS] [N_ITEMS]   (default 3 rounds, N_ITEMS=100000)
#
# Three sendlater nodes against one on the SAME PostgreSQL, back to back (issue 21 item 8):
# builds the e2e bench once (`cargo bench --bench e2e --no-run`, release profile), starts one
# throwaway PostgreSQL (scripts/pg.sh: durable, fsync/synchronous_commit/full_page_writes
# on), then ROUNDS times: e2e `--quick schedule-unary schedule-batch dispatch` with
# E2E_NODES=1, then the same with E2E_NODES=3 (three `serve` processes on each scenario's
# fresh database, the callers' calls round-robin over them, every connector streaming from
# all three; see benches/e2e.rs). N_ITEMS is dispatch's item count (E2E_ITEMS). `uptime` is
# printed before every run and at the end; RESULT lines go to stdout, then the per-round
# ratios (3 nodes / 1 node), their median and spread (min-max).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-100000}

. scripts/pg.sh
pg_install
# One build, before the database starts (never two builds at once).
build_log=$(mktemp)
cargo bench --bench e2e --no-run 2>&1 | tee "$build_log" >&2
bench=$(sed -n 's/.*Executable .*(\(.*\)).*/\1/p' "$build_log" | tail -n 1)
rm -f "$build_log"
[ -x "$bench" ] || { echo "no e2e bench binary in cargo's output" >&2; exit 2; }

log=$(mktemp "${TMPDIR:-/tmp}/bench-nodes.XXXXXX")
trap 'set +e; pg_stop; rm -f "$log"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
pg_start
url=$SENDLATER_TEST_PG

for r in $(seq 1 "$rounds"); do
  for nodes in 1 3; do
    echo "== round $r: $nodes node(s); uptime: $(uptime)" | tee -a "$log"
    E2E_DB=$url E2E_NODES=$nodes E2E_ITEMS=$n "$bench" --quick schedule-unary schedule-batch dispatch \
      | grep '^RESULT' | tee -a "$log"
  done
done
echo "== end; uptime: $(uptime)"

python3 - "$log" <<'EOF'
import re, statistics, sys

# (label, scenario, selector key=value or None, figure, higher is better)
FIGURES = [
    ("unary schedule, 64 callers, 1 conn per node, /s", "schedule-unary", ("conns", "1"), "rps", True),
    ("unary schedule, 64 callers, 4 conns per node, /s", "schedule-unary", ("conns", "4"), "rps", True),
    ("batch schedule, batches of 1000, /s", "schedule-batch", ("batch", "1000"), "rps", True),
    ("batch schedule, batches of 100, /s", "schedule-batch", ("batch", "100"), "rps", True),
    ("drain, jobs/s", "dispatch", None, "jobs_per_s", True),
    ("on-time lateness p99, ms (lower is better)", "dispatch", None, "lateness_p99_ms", False),
]
rounds = {}  # round -> nodes -> [RESULT fields]
cur = None
for line in open(sys.argv[1]):
    m = re.match(r"== round (\d+): (\d+) node", line)
    if m:
        cur = (int(m.group(1)), int(m.group(2)))
        continue
    if line.startswith("RESULT") and cur:
        w = line.split()
        kv = dict(x.split("=", 1) for x in w[2:] if "=" in x)
        kv["_scenario"] = w[1]
        rounds.setdefault(cur[0], {}).setdefault(cur[1], []).append(kv)

def pick(results, scenario, sel, fig):
    for kv in results:
        if kv["_scenario"] == scenario and (sel is None or kv.get(sel[0]) == sel[1]):
            return float(kv[fig])
    return None

print()
print("== 3 nodes / 1 node, per round (goal >= 0.8x for throughput) ==")
for label, sc, sel, fig, higher in FIGURES:
    ratios, cells = [], []
    for r in sorted(rounds):
        one = pick(rounds[r].get(1, []), sc, sel, fig)
        three = pick(rounds[r].get(3, []), sc, sel, fig)
        if one is None or three is None or one == 0:
            cells.append("n/a")
            continue
        ratio = three / one
        ratios.append(ratio)
        cells.append(f"{one:g} -> {three:g} ({ratio:.2f})")
    if not ratios:
        print(f"  {label}: no figures")
        continue
    med = statistics.median(ratios)
    verdict = ("met" if med >= 0.8 else "MISSED") if higher else "ratio above 1 is worse"
    print(f"  {label}: " + " / ".join(cells))
    print(f"    median {med:.2f}x, spread {min(ratios):.2f}-{max(ratios):.2f}: {verdict}")
EOF
