#!/usr/bin/env bash
# Fuzzes request decoding, proto -> domain conversion and validation, and the listings'
# page tokens, with cargo-fuzz (libFuzzer) for a bounded time: scripts/fuzz.sh [SECONDS]
# (default 300, per target).
# Not part of .ci/run. cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the
# machine's stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-300}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz run schedule_request -- -max_total_time="$secs" -max_len=65536
cargo fuzz run page_token -- -max_total_time="$secs" -max_len=4096
