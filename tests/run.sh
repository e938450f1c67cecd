#!/usr/bin/env bash
# The project's test command (README, .ci/run): brings the test cluster up (idempotent), checks format
# and lints, then runs every unit and end-to-end test against the real cluster. Fails if any test was
# skipped or ignored: an end-to-end test that did not run is a failure, not a pass.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=$HOME/.cargo/bin:$PATH
[[ $(id -u) == 0 ]] || { echo "tests/run.sh: run as root (it starts the test cluster)" >&2; exit 1; }

bash tests/cluster/up.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
[[ $rc == 0 ]] || { echo "tests/run.sh: tests failed" >&2; exit "$rc"; }
if grep -E '^test result: .* [1-9][0-9]* ignored' "$log" >/dev/null; then
    echo "tests/run.sh: some tests were ignored; every test must run" >&2
    exit 1
fi
passed=$(grep -oE '^test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
[[ $passed -gt 0 ]] || { echo "tests/run.sh: no test ran" >&2; exit 1; }
echo "all tests: $passed passed, 0 failed"
