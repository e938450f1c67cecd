#!/usr/bin/env bash
# The scale curve of image distribution (issue 16): the test cluster grown to 16 slurmd nodes, then
# `srun -N{1,2,4,8,16} -n{N} --container-image=IMAGE true` from the test registry, cold and warm, against
# the bare step of the same size, and the registry's blob fetches per job at each size: with the site's
# `job_fetch_dir` (one fetch per job, the other nodes load what the first fetched) and without it (each
# node pulls for itself).
#   tests/bench_scale.sh [--stack debian12|debian13] [REPS]     (as root; default 3 runs per row)
# Prints a Markdown table (the source of BENCHMARKS.md's scale section); leaves the cluster at 3 nodes.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export MDT_NODE_COUNT=16   # MDT_NODES: all 16 (the image is forgotten on every node)
source "$top/tests/cluster/lib.sh"
stack_args "$@"
REPS=${MDT_ARGS[0]:-3}
SIZES=(1 2 4 8 16)
back_to_three() { MDT_NODE_COUNT=3 bash "$top/tests/cluster/up.sh" --stack "$MDT_STACK" >&2; }
if [[ -z ${MDT_INSIDE:-} ]]; then
    trap back_to_three EXIT
    MDT_NODE_COUNT=16 bash "$top/tests/cluster/up.sh" --stack "$MDT_STACK" >&2
fi
# a stack in a root of its own is measured from inside it, bare metal there too
if outside_stack; then
    stack_exec env MDT_INSIDE=1 MDT_STACK="$MDT_STACK" MDT_NODE_COUNT=16 bash "$top/tests/bench_scale.sh" "$REPS"
    exit
fi
[[ $(sinfo -h -N -o %N | sort -u | wc -l) == 16 ]] || die "the cluster is not at 16 nodes: $(sinfo -h -N -o '%N:%t' | tr '\n' ' ')"

SITE=/etc/mpiexec-docker/config.yaml
saved_site=$(mktemp)
cp -a "$SITE" "$saved_site" 2>/dev/null || : > "$saved_site"
restore_site() { if [[ -s $saved_site ]]; then cp "$saved_site" "$SITE"; else rm -f "$SITE"; fi; rm -f "$saved_site" "${started:-}"; }
if [[ -n ${MDT_INSIDE:-} ]]; then trap restore_site EXIT; else trap 'restore_site; back_to_three' EXIT; fi
FETCH=$MDT_SHARED/job-fetch
install -d -m 1777 "$FETCH"
started=$(mktemp)   # what this run's jobs left is newer
fetch_dir() {   # fetch_dir on|off: the site's job_fetch_dir set or not
    if [[ -s $saved_site ]]; then grep -v '^job_fetch_dir:' "$saved_site" > "$SITE.new" || true; else : > "$SITE.new"; fi
    [[ $1 == on ]] && echo "job_fetch_dir: $FETCH" >> "$SITE.new"
    mv "$SITE.new" "$SITE"
}

echo "Stack: $MDT_STACK — $(srun --version), $(podman --version), 16 slurmd nodes on one machine ($(nproc) cores)"
echo

# a 64 MB image no node has (busybox and one random 64 MB layer), in the test registry
IMG=$MDT_REGISTRY/md/bench-scale:latest
random_image localhost/md-bench-scale:latest 64M
podman push --quiet --tls-verify=false localhost/md-bench-scale:latest "$IMG"

U() { as_user "$MDT_USER" bash -c "cd /tmp && $1"; }
forget() {   # the image gone from every node's store and the helper's cache, at once
    local node
    for node in "${MDT_NODES[@]}"; do
        node_exec "$node" runuser -u "$MDT_USER" -- env HOME="/home/$MDT_USER" bash -c \
            "podman rmi -f $IMG >/dev/null 2>&1; mpiexec_docker images prune >/dev/null 2>&1" &
    done
    wait
}
lines() { wc -l < "$MDT_REGISTRY_LOG"; }
# the registry's blob GETs (answered 200) of the image since line $1 of its log
blobs() { tail -n +"$(($1 + 1))" "$MDT_REGISTRY_LOG" | grep -c '"GET /v2/md/bench-scale/blobs/sha256:[0-9a-f]* [^"]*" 200 ' || true; }
# until the test user's jobs have ended on every node (their epilogs done): the next job gets the
# same nodes, and a setting changed next is not one a job's end still reads
settle() {
    local i
    for i in $(seq 600); do
        [[ -z $(squeue -h -u "$MDT_USER" -o %i) ]] && return 0
        sleep 0.1
    done
    die "jobs of $MDT_USER still there after 60 s: $(squeue -u "$MDT_USER" | tail -n +2 | tr '\n' ';')"
}
# seconds of one step as the test user (a job of its own); the step must succeed
once() {
    local t0 t1
    settle
    t0=$(date +%s.%N)
    U "$1" >/dev/null 2>"$MDT_SHARED/bench-scale.err" || die "failed: $1: $(tail -3 "$MDT_SHARED/bench-scale.err")"
    t1=$(date +%s.%N)
    settle
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}
med() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
add() { python3 -c "print(f'{$1 - $2:+.3f}')"; }
# a job's blob fetches: the same at every repetition, or every value seen
same() { printf '%s\n' "$@" | sort -un | paste -sd/; }

echo "| nodes | bare | cold, one fetch per job | added | blob GETs | cold, each node pulls | added | blob GETs | warm | added | blob GETs |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for n in "${SIZES[@]}"; do
    bare=(); cj=(); cjb=(); cn=(); cnb=(); w=(); wb=()
    # always the same nodes: warm means this job's nodes have the image
    on="-N$n -n$n -w node[1-$n]"
    step="srun $on --container-image=$IMG true"
    for _ in $(seq "$REPS"); do
        bare+=("$(once "srun $on true")")
        fetch_dir on; forget
        from=$(lines); cj+=("$(once "$step")"); cjb+=("$(blobs "$from")")
        from=$(lines); w+=("$(once "$step")"); wb+=("$(blobs "$from")")
        fetch_dir off; forget
        from=$(lines); cn+=("$(once "$step")"); cnb+=("$(blobs "$from")")
    done
    b=$(med "${bare[@]}"); j=$(med "${cj[@]}"); p=$(med "${cn[@]}"); m=$(med "${w[@]}")
    echo "| $n | $b | $j | $(add "$j" "$b") | $(same "${cjb[@]}") | $p | $(add "$p" "$b") | $(same "${cnb[@]}") | $m | $(add "$m" "$b") | $(same "${wb[@]}") |"
done
forget
settle
# the jobs' ends removed what the nodes handed each other
left=$(find "$FETCH" -mindepth 2 -newer "$started" 2>/dev/null | head -3)
[[ -z $left ]] || echo "(left in the job fetch directory: $left)"
