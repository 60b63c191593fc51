#!/usr/bin/env bash
# The whole test suite: installs the test dependencies if missing, checks formatting and
# lints, then runs every test (unit, property, statistical, real-broker and real-Alertmanager
# integration) in release mode, since the statistical tests replay millions of events.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/armwatch-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --check
# the check modules are declared through a macro, where cargo fmt does not follow them
rustfmt --edition 2021 --check src/check/*.rs
echo "== cargo clippy"
cargo clippy --release --all-targets --quiet -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --no-fail-fast --success-output never --failure-output final "$@"
else
  cargo test --release --no-fail-fast "$@"
fi
