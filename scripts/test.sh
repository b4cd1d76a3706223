#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs them.
#
# - Python's aiosmtpd: the real SMTP server the email connector's tests talk to.
# - Debian's chromium and chromium-driver: the headless browser the staff console's
#   browser tests (tests/console_browser.rs) drive over WebDriver.
# - Debian's PostgreSQL (scripts/pg.sh): a throwaway server, started here and deleted on exit,
#   for the second pass of the suite and for the tests that need PostgreSQL in both passes.
# - Everything else comes from crates.io through cargo (protos are compiled by protox,
#   SQLite is bundled): no system protoc, no system SQLite.
#
# The suite runs twice: on SQLite (SENDLATER_TEST_STORE=sqlite), then on PostgreSQL
# (SENDLATER_TEST_STORE=postgres); SENDLATER_TEST_PG holds the server's URL in both.
# Arguments go to both `cargo test` runs (./scripts/test.sh --test scheduler_smoke).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "installing aiosmtpd (the SMTP server used by the email connector tests)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd>=1.4,<2' \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'aiosmtpd>=1.4,<2'
fi

if [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver (the browser of the console's browser tests)" >&2
  # As root apt-get runs as it is; otherwise through sudo when there is one.
  as_root=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then as_root="sudo"; fi
  apt_install() {
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
  }
  # A fresh machine may have no package lists yet, or stale ones: update once, retry.
  apt_install || { $as_root env DEBIAN_FRONTEND=noninteractive apt-get update && apt_install; }
fi

. scripts/pg.sh
pg_install

logs="$(mktemp -d)"
cleanup() {
  set +e
  pg_stop
  rm -rf "$logs"
}
trap cleanup EXIT
# Interrupted: exit through the EXIT trap, which stops the server and deletes its folder.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
pg_start

status=0
for store in sqlite postgres; do
  echo "=== the test suite on $store (SENDLATER_TEST_STORE=$store)" >&2
  # The failover test (tests/failover.rs, its name starts with "multinode") starts its own
  # PostgreSQL and nodes whatever the store: it runs once, in the PostgreSQL pass, and the
  # SQLite pass says it skips it (a filter on the test harness's command line).
  once=()
  if [ "$store" = sqlite ]; then
    echo "(the multinode failover test runs in the PostgreSQL pass only)" >&2
    once=(--skip multinode)
    case " $* " in *" -- "*) ;; *) once=(-- "${once[@]}") ;; esac
  fi
  # Bounded: a test that hangs fails its pass (cargo names it "running for over 60
  # seconds" above) instead of holding CI until its own limit. A pass takes ~5 minutes.
  SENDLATER_TEST_STORE=$store timeout -k 30 "${SENDLATER_TEST_PASS_LIMIT:-30m}" \
    cargo test --no-fail-fast "$@" ${once[@]+"${once[@]}"} 2>&1 | tee "$logs/$store" || status=$?
done
# A proptest failure is saved under proptest-regressions/ (replayed first by later runs):
# show the new cases, so one seen in CI can be committed and replayed anywhere.
if ! git diff --quiet -- proptest-regressions 2>/dev/null; then
  echo "proptest saved failing cases (commit them with the fix):" >&2
  git diff -- proptest-regressions >&2
fi
# Closing lines: one per store, then the total, over every test binary (cargo prints one
# `test result:` line per binary, the last being the doc-tests, which has none).
count() {
  awk -v label="$1" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
       END { printf "tests%s: %d passed, %d failed, %d skipped\n", label, p, f, s }' "${@:2}"
}
count " (SQLite)" "$logs/sqlite"
count " (PostgreSQL)" "$logs/postgres"
count "" "$logs/sqlite" "$logs/postgres"
exit "$status"
