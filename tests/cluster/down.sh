#!/usr/bin/env bash
# Stops the test cluster tests/cluster/up.sh started, and only that: slurmd node1..nodeN and every process
# left in their namespaces (containers, conmon, Podman pause processes), slurmctld, munged when up.sh
# started it, the network namespaces, the bridge and the hugetlb mount. Built images and installed
# packages stay (a later up.sh reuses them); --purge also removes the node stores and image archives.
#   tests/cluster/down.sh [--stack debian12|debian13] [--purge]
# A stack in a root file system of its own (debian13) is stopped from inside first (containers, Podman's
# records), then its init is killed, which ends every process of it; --purge then removes its root.
source "$(dirname "$0")/lib.sh"

[[ $(id -u) == 0 ]] || die "run as root"
stack_args "$@"
purge=0
[[ ${MDT_ARGS[0]:-} == --purge ]] && purge=1

if outside_stack; then
    if stack_pid >/dev/null; then
        log "stopping the $MDT_STACK stack"
        stack_stop
    fi
    if [[ $purge == 1 ]]; then
        log "purging the $MDT_STACK root file system and stores"
        rm -rf "$STACK_DIR"
    fi
    log "stack down"
    exit 0
fi

# every node that runs or has a network namespace, however many up.sh was asked for
# (tests/bench_scale.sh grows the cluster to 16 nodes: a later 3-node up.sh stops them all)
mapfile -t MDT_NODES < <(
    { printf '%s\n' "${MDT_NODES[@]}"
      for f in /run/slurmd-node*.pid /run/netns/node*; do [[ -e $f ]] && basename "${f%.pid}" | sed 's/^slurmd-//'; done
    } | grep -E '^node[0-9]+$' | sort -uV)

stop_pids() {   # TERM, wait up to 5 s, then KILL
    [[ $# == 0 ]] && return 0
    kill -TERM "$@" 2>/dev/null || true
    local i
    for i in $(seq 1 25); do
        local alive=0 p
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && return 0
        sleep 0.2
    done
    kill -KILL "$@" 2>/dev/null || true
    sleep 0.2
}

for node in "${MDT_NODES[@]}"; do
    pid=$(node_pid "$node" || true)
    [[ -n $pid ]] || continue
    log "stopping $node (slurmd $pid and everything in its namespaces)"
    # containers first, so that Podman's records and mounts go too (bounded: a Podman wedged on a
    # lock must not wedge the teardown)
    timeout 30 nsenter -t "$pid" -m -u -n -- podman rm -af -t 0 >/dev/null 2>&1 || true
    ids=$(timeout 30 nsenter -t "$pid" -m -u -n -- docker ps -aq 2>/dev/null || true)
    [[ -z $ids ]] || timeout 30 nsenter -t "$pid" -m -u -n -- docker rm -f $ids >/dev/null 2>&1 || true
    for u in "$MDT_USER" "$MDT_USER2"; do
        home=$(getent passwd "$u" | cut -d: -f6) || continue
        timeout 30 nsenter -t "$pid" -m -u -n -- runuser -u "$u" -- env HOME="$home" podman rm -af -t 0 >/dev/null 2>&1 || true
    done
    # every process of the node: in its mount namespace, or in its network namespace (rootless
    # Podman's conmon lives in Podman's own mount namespace but in the node's network)
    mapfile -t pids < <({ pids_in_mntns "$pid"; ip netns pids "$node" 2>/dev/null; } | sort -u)
    stop_pids "${pids[@]}"
    rm -f "/run/slurmd-$node.pid"
done

# the login node's dockerd (the nodes' went with their namespaces)
if [[ -s /run/mdt-node/dockerd.pid ]] && kill -0 "$(cat /run/mdt-node/dockerd.pid)" 2>/dev/null; then
    log "stopping the login node's dockerd"
    ids=$(timeout 30 docker ps -aq 2>/dev/null || true)
    [[ -z $ids ]] || timeout 30 docker rm -f $ids >/dev/null 2>&1 || true
    stop_pids "$(cat /run/mdt-node/dockerd.pid)"
fi

if [[ -s /run/slurmctld.pid ]] && grep -q "mpiexec-docker's tests/cluster/up.sh" /etc/slurm/slurm.conf 2>/dev/null; then
    log "stopping slurmctld"
    stop_pids "$(cat /run/slurmctld.pid)"
    rm -f /run/slurmctld.pid
fi
if [[ -e $MDT_RUN/started-munged ]]; then
    log "stopping munged"
    stop_pids $(pgrep -x munged || true)
    rm -f "$MDT_RUN/started-munged"
fi

for node in "${MDT_NODES[@]}"; do
    ip link del "mdt-$node" 2>/dev/null || true
    [[ -e /run/netns/$node ]] && ip netns del "$node"
done
ip link del "$MDT_BRIDGE" 2>/dev/null || true

if [[ -e $MDT_RUN/mounted-hugetlb ]]; then
    umount /sys/fs/cgroup/hugetlb 2>/dev/null && rmdir /sys/fs/cgroup/hugetlb 2>/dev/null || true
    rm -f "$MDT_RUN/mounted-hugetlb"
fi

if [[ -s $MDT_RUN/auth-registry.pid ]]; then
    stop_pids "$(cat "$MDT_RUN/auth-registry.pid")"
    rm -f "$MDT_RUN/auth-registry.pid"
fi
if [[ -s $MDT_RUN/registry.pid ]]; then
    log "stopping the test registry"
    stop_pids "$(cat "$MDT_RUN/registry.pid")"
    rm -f "$MDT_RUN/registry.pid"
fi

if [[ -e $MDT_RUN/fake-devices ]]; then
    xargs -r rm -f < "$MDT_RUN/fake-devices"
    rm -f "$MDT_RUN/fake-devices"
fi

if [[ $purge == 1 ]]; then
    log "purging node stores and image archives"
    running=
    for s in "${MDT_STACKS[@]}"; do [[ -s $MDT_RUN/stack-$s.pid ]] && running=1; done
    # another stack's root file system stays while that stack runs
    if [[ -n $running ]]; then
        find "$MDT_STATE" -mindepth 1 -maxdepth 1 ! -name stacks -exec rm -rf {} +
    else
        rm -rf "$MDT_STATE"
    fi
    for name in "${MDT_IMAGES[@]}" nompi; do podman rmi -f "$(image_ref "$name")" >/dev/null 2>&1 || true; done
fi
[[ -n ${MDT_INSIDE:-} ]] || rmdir "$MDT_RUN" 2>/dev/null || true
log "cluster down"
