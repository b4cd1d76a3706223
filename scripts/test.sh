#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs them.
#
# - Python's aiosmtpd: the real SMTP server the email connector's tests talk to.
# - Everything else comes from crates.io through cargo (protos are compiled by protox,
#   SQLite is bundled): no system protoc, no system SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "installing aiosmtpd (the SMTP server used by the email connector tests)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd>=1.4,<2' \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'aiosmtpd>=1.4,<2'
fi

cargo test "$@"
