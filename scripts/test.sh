#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs them.
#
# - Python's aiosmtpd: the real SMTP server the email connector's tests talk to.
# - Debian's chromium and chromium-driver: the headless browser the staff console's
#   browser tests (tests/console_browser.rs) drive over WebDriver.
# - Everything else comes from crates.io through cargo (protos are compiled by protox,
#   SQLite is bundled): no system protoc, no system SQLite.
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

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test "$@" 2>&1 | tee "$log" || status=$?
# A proptest failure is saved under proptest-regressions/ (replayed first by later runs):
# show the new cases, so one seen in CI can be committed and replayed anywhere.
if ! git diff --quiet -- proptest-regressions 2>/dev/null; then
  echo "proptest saved failing cases (commit them with the fix):" >&2
  git diff -- proptest-regressions >&2
fi
# One closing line over every test binary (cargo prints one per binary, the last being
# the doc-tests, which has none).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
