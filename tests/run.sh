#!/usr/bin/env bash
# The project's test command (README, .ci/run): checks format, lints and docs, then, for each test
# stack, brings its cluster up (idempotent) and runs every unit and end-to-end test against it:
#   debian12  this machine itself: Slurm 22.05, Podman 4.3, Open MPI 4 (tasks join in task_init)
#   debian13  a Debian 13 root of its own: Slurm 24.11, Podman 5.4, Open MPI 5 (spank_prepend_task_argv)
#
#   tests/run.sh [--stack NAME]... [TEST ARGS]     default: both stacks
#
# Fails if any test was skipped or ignored: an end-to-end test that did not run is a failure, not a
# pass.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=$HOME/.cargo/bin:$PATH
[[ $(id -u) == 0 ]] || { echo "tests/run.sh: run as root (it starts the test clusters)" >&2; exit 1; }

stacks=() args=()
while (($#)); do
    case $1 in
        --stack) stacks+=("$2"); shift 2 ;;
        --stack=*) stacks+=("${1#--stack=}"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ ${#stacks[@]} -gt 0 ]] || stacks=(debian12 debian13)

# a fresh machine has no Slurm headers yet: the plugin builds against the installed Slurm's
bash tests/cluster/up.sh --packages
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
# what the tests load beside themselves (the plugin's shared object: tests/unload.rs), built where
# cargo is at hand (a stack's tests run inside it)
cargo build --workspace --quiet

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=0
declare -A took
for stack in "${stacks[@]}"; do
    t0=$SECONDS
    bash tests/cluster/up.sh --stack "$stack"
    echo "=== tests on the $stack stack" | tee -a "$log"
    set +e
    if [[ $stack == debian12 ]]; then
        cargo test --workspace --no-fail-fast "${args[@]}" 2>&1 | tee -a "$log"
        rc=${PIPESTATUS[0]}
    else
        # the test programs are built here and run inside the stack (its own Slurm, engines, users),
        # each from its package's directory as cargo would run it
        rc=0
        cargo test --workspace --no-run --message-format=json --quiet > "$log.json" || rc=1
        while read -r dir exe; do
            echo "     Running $exe on $stack" | tee -a "$log"
            bash tests/cluster/login.sh --stack "$stack" -- \
                env -C "$dir" RUST_BACKTRACE=1 "$exe" "${args[@]}" 2>&1 | tee -a "$log"
            [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
        done < <(python3 -c '
import json, os, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(os.path.dirname(m["manifest_path"]), m["executable"])
' "$log.json")
        rm -f "$log.json"
    fi
    set -e
    took[$stack]=$((SECONDS - t0))
    echo "=== $stack: exit $rc after ${took[$stack]} s" | tee -a "$log"
    [[ $rc == 0 ]] || failed=1
done

[[ $failed == 0 ]] || { echo "tests/run.sh: tests failed" >&2; exit 1; }
if grep -E '^test result: .* [1-9][0-9]* ignored' "$log" >/dev/null; then
    echo "tests/run.sh: some tests were ignored; every test must run" >&2
    exit 1
fi
passed=$(grep -oE '^test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
[[ $passed -gt 0 ]] || { echo "tests/run.sh: no test ran" >&2; exit 1; }
for stack in "${stacks[@]}"; do echo "$stack: ${took[$stack]} s"; done
echo "all tests: $passed passed, 0 failed"
