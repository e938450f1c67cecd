# Shared settings and functions of the test-cluster scripts (sourced, not run).
#
# The cluster: munged and slurmctld in the root namespaces (the "login node"), and three slurmd nodes
# (MDT_NODE_COUNT),
# each in its own network, UTS and mount namespace with a private /tmp, /dev/shm and /run pieces, and
# node-local container storage (rootful /var/lib/containers and the test users' rootless stores under
# /var/local). Everything it starts is recorded under $MDT_RUN so that teardown stops only that.

set -euo pipefail

# Which test stack: debian12 (this machine itself, Slurm 22.05) or debian13 (Slurm 24.11, Podman 5,
# Open MPI 5, in a root file system of its own: see stack.sh). Scripts take `--stack NAME` through
# [`stack_args`]; inside a stack MDT_INSIDE=1 and the paths below are the stack's own.
MDT_STACK=${MDT_STACK:-debian12}
MDT_STACKS=(debian12 debian13)
# Podman 5 warns at every call on this machine kind (cgroup v1): the scripts know
export PODMAN_IGNORE_CGROUPSV1_WARNING=1

MDT_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MDT_STATE=${MDT_STATE:-/var/lib/mpiexec-docker-test}   # images, node directories (persistent)
MDT_RUN=${MDT_RUN:-/run/mpiexec-docker-test}           # pids of what we started
# How many slurmd nodes: 3 for the test suite (which assumes node1..node3); tests/bench_scale.sh grows
# the cluster to 16 for its scale curve and back. Nodes past the third get no preloaded images.
MDT_NODE_COUNT=${MDT_NODE_COUNT:-3}
[[ $MDT_NODE_COUNT =~ ^[1-9][0-9]?$ && $MDT_NODE_COUNT -ge 3 && $MDT_NODE_COUNT -le 64 ]] \
    || { echo "[cluster] error: MDT_NODE_COUNT must be 3 to 64, not '$MDT_NODE_COUNT'" >&2; exit 1; }
MDT_NODES=()
for ((mdt_i = 1; mdt_i <= MDT_NODE_COUNT; mdt_i++)); do MDT_NODES+=("node$mdt_i"); done
unset mdt_i
MDT_BRIDGE=mdtbr0
MDT_NET=10.77.0
MDT_REGISTRY=${MDT_REGISTRY:-10.77.0.1:5000}     # the test registry, on the cluster network
MDT_REGISTRY_LOG=/var/log/mdt-registry.log
# the same images behind a login (htpasswd: user mdt, password mdt-site-secret), for registry logins
MDT_AUTH_REGISTRY=${MDT_AUTH_REGISTRY:-${MDT_REGISTRY%:*}:5001}
MDT_USER=${MDT_USER:-mpitest}     # the non-root test user (rootless Podman)
MDT_USER2=${MDT_USER2:-mpitest2}  # a second user, for isolation tests
# where the package (packaging/build.sh) installs them
MDT_PLUGIN=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/slurm-wlm/spank_mpiexec_docker.so
MDT_HELPER=/usr/bin/mpiexec_docker
MDT_SHARED=$MDT_STATE/shared      # a directory every node sees (stands in for a shared filesystem)
MDT_IMAGES=(openmpi mpich intelmpi)

log() { printf '[cluster%s] %s\n' "${MDT_STACK:+ $MDT_STACK}" "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

node_ip() { echo "$MDT_NET.1${1#node}"; }

# pid of a node's slurmd: the anchor of its namespaces
node_pid() {
    local f=/run/slurmd-$1.pid
    [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

# run a command inside a node's namespaces: node_exec node2 podman ps
node_exec() {
    local node=$1; shift
    local pid; pid=$(node_pid "$node") || die "$node is not running"
    nsenter -t "$pid" -m -u -n -- "$@"
}

# run a command as a test user with a login-like environment (rootless Podman needs HOME)
as_user() {
    local user=$1; shift
    local home; home=$(getent passwd "$user" | cut -d: -f6)
    runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
        PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"
}

image_ref() { echo "localhost/md-$1:latest"; }

# all pids whose mount namespace is the one of pid $1 (including $1)
pids_in_mntns() {
    local ref; ref=$(readlink "/proc/$1/ns/mnt") || return 0
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/ns/mnt" 2>/dev/null) == "$ref" ]] && echo "${p#/proc/}"
    done
    return 0
}

# A benchmark image no node has: busybox and one random layer of SIZE (head -c units), imported into
# root's Podman store as REF unless it is there: random_image localhost/md-bench-big:latest 200M
random_image() {
    podman image exists "$1" && return 0
    local tmp; tmp=$(mktemp -d /var/tmp/mdt-random.XXXXXX)
    mkdir -p "$tmp/root/bin" "$tmp/root/data"
    cp /bin/busybox "$tmp/root/bin/busybox"; ln -s busybox "$tmp/root/bin/sh"; ln -s busybox "$tmp/root/bin/true"
    head -c "$2" /dev/urandom > "$tmp/root/data/blob"
    tar -C "$tmp/root" -cf "$tmp/root.tar" .
    podman import --quiet "$tmp/root.tar" "$1" >/dev/null
    rm -rf "$tmp"
}

IMPI_VERSION=2021.19.0
# Unpacks the data part of Intel MPI's wheels into $1 (what pip would put under its prefix).
intel_mpi_tree() {
    local wheels=$MDT_STATE/wheels
    mkdir -p "$wheels"
    if ! ls "$wheels"/impi_rt-$IMPI_VERSION-*.whl "$wheels"/impi_devel-$IMPI_VERSION-*.whl >/dev/null 2>&1; then
        log "downloading Intel MPI $IMPI_VERSION wheels from PyPI"
        python3 -m pip download --quiet --no-deps -d "$wheels" "impi-rt==$IMPI_VERSION" "impi-devel==$IMPI_VERSION"
    fi
    python3 - "$1" "$wheels"/impi_rt-$IMPI_VERSION-*.whl "$wheels"/impi_devel-$IMPI_VERSION-*.whl <<'PY'
import os, sys, zipfile
dest = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if ".data/data/" not in name or name.endswith("/"):
                continue
            path = os.path.join(dest, name.split(".data/data/", 1)[1])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(info) as src, open(path, "wb") as out:
                out.write(src.read())
            os.chmod(path, ((info.external_attr >> 16) & 0o777) or 0o644)
PY
}

# Takes `--stack NAME` off the arguments: sets MDT_STACK, leaves the rest in MDT_ARGS.
stack_args() {
    MDT_ARGS=()
    while (($#)); do
        case $1 in
            --stack) [[ $# -ge 2 ]] || die "--stack needs a name (${MDT_STACKS[*]})"; MDT_STACK=$2; shift 2 ;;
            --stack=*) MDT_STACK=${1#--stack=}; shift ;;
            *) MDT_ARGS+=("$1"); shift ;;
        esac
    done
    stack_suite "$MDT_STACK" >/dev/null
    STACK_DIR=$MDT_STATE/stacks/$MDT_STACK
    STACK_ROOT=$STACK_DIR/rootfs
    STACK_PIDFILE=$MDT_RUN/stack-$MDT_STACK.pid
}

# Whether this script acts on a stack in a root file system of its own, from outside it.
outside_stack() { [[ $MDT_STACK != debian12 && -z ${MDT_INSIDE:-} ]]; }

source "$MDT_TOP/tests/cluster/stack.sh"
