#!/usr/bin/env bash
# Faults at every phase (issue 19), made on the test clusters: runs the fault tests
# (tests/e2e/faults.rs, every test named fault_made_*) on each stack and prints RELIABILITY.md from the
# rows they write (fault, what the user saw, what was left after the job, the nodes) into RELIABILITY.md;
# the file's hand-written part (from its "## Notes" heading on) is kept.
#   tests/reliability.sh [debian12|debian13]...      (as root; default: both stacks)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
source "$top/tests/cluster/lib.sh"
stacks=("$@")
[[ ${#stacks[@]} -gt 0 ]] || stacks=(debian12 debian13)
rows() {   # where a stack's tests write their rows ({SHARED}/reliability.rows, seen from here)
    case $1 in
        debian12) echo "$MDT_SHARED/reliability.rows" ;;
        *) echo "$MDT_STATE/stacks/$1/rootfs$MDT_SHARED/reliability.rows" ;;
    esac
}
log=$(mktemp)
out=$top/RELIABILITY.md
new=$(mktemp "$out.XXXXXX")
# the rows files go with this run: where none is, the tests write no rows (the suite's own runs)
trap 'rm -f "$log" "$new"; for s in "${stacks[@]}"; do rm -f "$(rows "$s")"; done' EXIT
for stack in "${stacks[@]}"; do
    install -m 0644 /dev/null "$(rows "$stack")"   # the tests write their rows where this file is
    bash "$top/tests/run.sh" --stack "$stack" fault_made_ > "$log" 2>&1 || {
        tail -60 "$log" >&2
        echo "tests/reliability.sh: a fault test failed on $stack" >&2
        exit 1
    }
done
{
cat <<'HEAD'
# Reliability

Faults made on purpose on the test clusters, each followed by its checks: the step fails with one line
of ours (or completes), nothing of ours is left once the job is over (no container, volume, process,
mount, run directory or lock), no node is drained, and the next step on the node works. Produced by
`tests/reliability.sh` from the fault tests (`tests/e2e/faults.rs`), which are part of the suite.

| Slurm | fault | what the user saw | left after the job | nodes |
| --- | --- | --- | --- | --- |
HEAD
for stack in "${stacks[@]}"; do
    sed 's/^/| /; s/$/ |/; s/\t/ | /g' "$(rows "$stack")"
done
if [[ -f $out ]]; then
    sed -n '/^## Notes/,$ { /^## Notes/ { x; s/.*//; p; x }; p }' "$out"
fi
} > "$new"
chmod 0644 "$new"
mv "$new" "$out"
echo "tests/reliability.sh: wrote $out" >&2
