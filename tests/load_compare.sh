#!/usr/bin/env bash
# The slurmd-crash hunt (issue 19): the load of the fault tests (64 concurrent single-task steps over the
# 3 nodes, ROUNDS rounds) run bare (no plugin in plugstack.conf) and with the plugin built with debug
# assertions and overflow checks, every slurmd restarted before each so it loads exactly that. Counts
# failed steps and slurmd crashes (a node's slurmd gone or replaced). The debian12 stack (this
# machine's Slurm); prints one Markdown table row per run.
#   tests/load_compare.sh [ROUNDS]      (as root, the cluster up; default 10 rounds)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
source "$top/tests/cluster/lib.sh"
rounds=${1:-10}
debug_target=$top/target/load-compare   # (kept: a rerun builds only what changed)
restart() {   # restart PLUGSTACK_LINE: the whole cluster stopped, then started with that plugstack.conf line
    bash "$top/tests/cluster/down.sh" >/dev/null 2>&1
    MDT_PLUGSTACK=$1 bash "$top/tests/cluster/up.sh" >/dev/null 2>&1
}
trap 'rm -f /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_mpiexec_docker_debug.so; bash "$top/tests/cluster/down.sh" >/dev/null 2>&1; bash "$top/tests/cluster/up.sh" >/dev/null 2>&1' EXIT

# the plugin with debug assertions and overflow checks (cargo's dev profile), against this Slurm
SLURM_INCLUDE_DIR=/usr/include cargo build --quiet -p mpiexec-docker-spank --target-dir "$debug_target" >&2
install -m 0644 "$debug_target/debug/libspank_mpiexec_docker.so" /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_mpiexec_docker_debug.so

load() {   # load NAME PLUGSTACK_LINE SRUN_OPTIONS
    local name=$1 line=$2 opts=$3
    restart "$line"
    local before=() n
    for n in "${MDT_NODES[@]}"; do before+=("$(cat "/run/slurmd-$n.pid")"); done
    local out t0=$SECONDS
    local file=$MDT_SHARED/load-compare.out
    install -o "$MDT_USER" -m 0644 /dev/null "$file"
    runuser -u "$MDT_USER" -- bash -c "cd /tmp && sbatch --wait -N3 -n3 --mem=6G -t 30 -o $file --wrap '
        for round in \$(seq $rounds); do
          for i in \$(seq 64); do srun --overlap -N1 -n1 -w node\$((i % 3 + 1)) $opts sh -c \"test -x /bin/true && echo ok\" & done; wait
        done'" >/dev/null || true
    out=$(grep -c '^ok$' "$file" || true)
    rm -f "$file"
    local crashed=0 i=0
    for n in "${MDT_NODES[@]}"; do   # a node's slurmd gone, or another in its place
        [[ $(cat "/run/slurmd-$n.pid" 2>/dev/null) == "${before[$i]}" ]] && kill -0 "${before[$i]}" 2>/dev/null || crashed=$((crashed + 1))
        i=$((i + 1))
    done
    echo "| $name | $((rounds * 64)) | $out | $((rounds * 64 - out)) | $crashed | $((SECONDS - t0)) s |"
}
echo "| plugin in plugstack.conf | steps | succeeded | failed | slurmd crashes | took |"
echo "| --- | --- | --- | --- | --- | --- |"
load "none (bare steps)" "# no plugin: tests/load_compare.sh" ""
load "debug-assertion build, container steps" \
    "required /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_mpiexec_docker_debug.so engine=podman helper=$MDT_HELPER" \
    "--container-image=localhost/md-openmpi"
