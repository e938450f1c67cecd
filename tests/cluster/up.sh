#!/usr/bin/env bash
# Brings the real 3-node Slurm + Podman test cluster up on this machine (Debian 12, as root).
#
#   tests/cluster/up.sh [--stack debian12|debian13]   install, build, start; idempotent (a second run
#                                                      only checks)
#   tests/cluster/up.sh --packages                     only this machine's Debian packages (what the
#                                                      workspace builds with: Slurm's headers, libclang)
#
# Steps: Debian packages; host fixes Podman/crun need on this machine kind; test users with rootless
# Podman; the project built and installed (helper + SPANK plugin); MPI test images built offline with
# mmdebstrap; munge, slurmctld and slurmd node1..node3 in their own namespaces; images loaded into every
# node's rootful and rootless stores. tests/cluster/down.sh undoes what this started.
#
# --stack debian13 runs the same cluster on Debian 13 (Slurm 24.11, Podman 5.4, Open MPI 5) in a root
# file system of its own (stack.sh): built here with mmdebstrap, with the plugin built against that
# Slurm's own headers and MPI images from Debian 13's packages; this script then runs again inside it.
source "$(dirname "$0")/lib.sh"
stack_args "$@"

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts Slurm daemons)"

PACKAGES=(podman crun uidmap slirp4netns fuse-overlayfs catatonit
          slurm-wlm slurm-client munge libslurm-dev slurm-wlm-basic-plugins-dev
          openmpi-bin libopenmpi-dev mpich libmpich-dev
          libclang-dev mmdebstrap iproute2 psmisc util-linux hyperfine file binutils
          docker-registry busybox-static docker.io rpm man-db squashfs-tools squashfs-tools-ng)

step_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} == 0 ]] && return
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What this machine kind lacks for Podman 4.3 / crun 1.8 to run (each fix says why).
step_host_fixes() {
    if [[ -d /sys/fs/cgroup/memory ]] && ! mountpoint -q /sys/fs/cgroup/hugetlb; then
        # crun refuses cgroup v1 "hybrid" while hugetlb sits only on the v2 hierarchy
        mkdir -p /sys/fs/cgroup/hugetlb
        mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
        touch "$MDT_RUN/mounted-hugetlb"
    fi
    mkdir -p /dev/mqueue
    mountpoint -q /dev/mqueue || mount -t mqueue mqueue /dev/mqueue
    # no udev here: give these the modes udev gives them on a normal Debian
    [[ -e /dev/net/tun ]] && chmod 0666 /dev/net/tun
    [[ -e /dev/fuse ]] && chmod 0666 /dev/fuse
    mkdir -p /etc/containers
    cat > /etc/containers/containers.conf <<'EOF'
# written by mpiexec-docker's tests/cluster/up.sh
[containers]
# setrlimit(RLIMIT_NOFILE) is refused on this machine kind
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
}

step_users() {
    local uid=1500 u
    for u in "$MDT_USER" "$MDT_USER2"; do
        id "$u" >/dev/null 2>&1 || useradd -m -u "$uid" -s /bin/bash "$u"
        uid=$((uid + 1))
        local base=$(( 200000 + ($(id -u "$u") - 1500) * 65536 ))
        grep -q "^$u:" /etc/subuid || echo "$u:$base:65536" >> /etc/subuid
        grep -q "^$u:" /etc/subgid || echo "$u:$base:65536" >> /etc/subgid
        local home; home=$(getent passwd "$u" | cut -d: -f6)
        install -d /var/local/containers   # the login node's own rootless stores
        install -d -o "$u" -g "$u" "/var/local/containers/$u"
        install -d -o "$u" -g "$u" "$home/.config" "$home/.config/containers"
        # node-local rootless store: /var/local is a different directory on every node
        cat > "$home/.config/containers/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "/var/local/containers/$u/storage"
runroot = "/tmp/containers-$u/run"
EOF
        chown "$u:$u" "$home/.config/containers/storage.conf"
    done
}

# The project is installed from its Debian package (packaging/build.sh), as a site installs it: the tests
# prove the package. The RPM is built beside it (its file list is checked by the tests).
step_build() {
    log "building the packages (helper, SPANK plugin, man pages) for this Slurm"
    build_packages "$MDT_STATE/packages"
    step_install_package
}

build_packages() {   # build_packages OUT [--slurm-include DIR]
    local out=$1; shift
    rm -f "$out"/mpiexec-docker[-_]*
    "$MDT_TOP/packaging/build.sh" --out "$out" --rpm "$@" >&2
}

step_install_package() {
    local deb; deb=$(ls "$MDT_STATE"/packages/mpiexec-docker_*.deb)
    log "installing $(basename "$deb")"
    dpkg -i --force-confdef --force-confold "$deb" >/dev/null
    # what the earlier tests/install.sh put under /usr/local would come first on PATH
    rm -rf /usr/local/bin/mpiexec_docker /usr/local/bin/run_in_docker /usr/local/lib/mpiexec-docker
}

# Each image: Debian bookworm + one MPI + compilers, with examples/hello built in as /usr/local/bin/mpi_hello.
# Intel MPI comes from PyPI (impi-rt: runtime, mpiexec.hydra, IMB-MPI1; impi-devel: mpicc), unpacked into
# /usr/local, over Debian's libfabric.
image_packages() {
    case $1 in
        openmpi)  echo openmpi-bin,libopenmpi-dev,gcc,libc6-dev,procps ;;
        mpich)    echo mpich,libmpich-dev,gcc,libc6-dev,procps ;;
        intelmpi) echo libfabric1,gcc,libc6-dev,procps ;;
    esac
}

# Builds (once per package list) the image archive of MPI flavour $1 from Debian suite $2; prints its
# path. Only a complete archive gets its final name.
image_archive() {
    local name=$1 suite=$2
    local key; key=$( (image_packages "$name"; echo "$suite $IMPI_VERSION v3"; cat "$MDT_TOP/examples/hello/hello.c") | sha256sum | cut -c1-16)
    local archive=$MDT_STATE/images/md-$name-$suite-$key.tar
    if [[ ! -s $archive ]]; then
        log "building image md-$name from Debian $suite with mmdebstrap (offline from Debian packages)"
        mkdir -p "$MDT_STATE/images"
        local tmp; tmp=$(mktemp -d /var/tmp/mdt-image.XXXXXX)
        local hooks=(--customize-hook="copy-in $MDT_TOP/examples/hello/hello.c /usr/local/src")
        if [[ $name == intelmpi ]]; then
            mkdir "$tmp/impi"
            intel_mpi_tree "$tmp/impi"
            hooks+=(--customize-hook="sync-in $tmp/impi /usr/local" --customize-hook='chroot "$1" ldconfig')
        fi
        hooks+=(--customize-hook='chroot "$1" mpicc -O2 -o /usr/local/bin/mpi_hello /usr/local/src/hello.c'
                --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*')
        mmdebstrap --quiet --variant=apt --include="$(image_packages "$name")" "${hooks[@]}" \
            "$suite" "$tmp/rootfs.tar" http://deb.debian.org/debian >&2
        local ref=localhost/mdt-build-$name-$suite:latest
        podman rmi -f "$ref" >/dev/null 2>&1 || true
        podman import --quiet --change 'CMD ["/bin/bash"]' --change "ENV MD_IMAGE_FLAVOUR=$name" \
            "$tmp/rootfs.tar" "$ref" >/dev/null
        podman tag "$ref" "$(image_ref "$name")"
        podman save --quiet --format docker-archive -o "$tmp/image.tar" "$(image_ref "$name")"
        podman rmi -f "$ref" >/dev/null 2>&1 || true
        mv "$tmp/image.tar" "$archive"
        rm -rf "$tmp"
        find "$MDT_STATE/images" -name "md-$name-$suite-*.tar" ! -name "$(basename "$archive")" -delete
    fi
    echo "$archive"
}

# The image archives of this machine's own stack, as md-NAME.tar.
step_images() {
    mkdir -p "$MDT_STATE/images"
    local name
    for name in "${MDT_IMAGES[@]}"; do
        local archive; archive=$(image_archive "$name" "$(stack_suite "$MDT_STACK")")
        ln -sfn "$(basename "$archive")" "$MDT_STATE/images/md-$name.tar"
    done
    step_nompi_image
}

step_nompi_image() {
    # an image without any MPI (for the error path): a few files, nothing to run
    if [[ ! -s $MDT_STATE/images/md-nompi.tar ]]; then
        local tmp; tmp=$(mktemp -d /var/tmp/mdt-image.XXXXXX)
        mkdir -p "$tmp/root/etc" "$tmp/root/tmp" "$tmp/root/bin"
        echo "an image without MPI" > "$tmp/root/etc/motd"
        tar -C "$tmp/root" -cf "$tmp/root.tar" .
        podman rmi -f "$(image_ref nompi)" >/dev/null 2>&1 || true
        podman import --quiet "$tmp/root.tar" "$(image_ref nompi)" >/dev/null
        podman save --quiet --format docker-archive -o "$tmp/image.tar" "$(image_ref nompi)"
        mv "$tmp/image.tar" "$MDT_STATE/images/md-nompi.tar"
        rm -rf "$tmp"
    fi
}

# A 2 MB image (busybox) for the image-distribution tests: kept as files on the shared file system
# (docker-archive and oci-archive) and pushed to the test registry, never preloaded on the nodes.
step_tiny_image() {
    local dir=$MDT_SHARED/images
    install -d -m 0755 "$dir"
    [[ -s $dir/md-tiny.tar && -s $dir/md-tiny.oci.tar ]] && return 0
    log "building image md-tiny (busybox)"
    local tmp; tmp=$(mktemp -d /var/tmp/mdt-image.XXXXXX)
    mkdir -p "$tmp/root/bin" "$tmp/root/etc" "$tmp/root/tmp" "$tmp/root/proc" "$tmp/root/dev" "$tmp/root/sys"
    cp /bin/busybox "$tmp/root/bin/busybox"
    local t
    for t in sh ls cat echo id true false sleep env hostname head mkdir touch pwd grep test wc; do
        ln -s busybox "$tmp/root/bin/$t"
    done
    echo "md-tiny" > "$tmp/root/etc/motd"
    tar -C "$tmp/root" -cf "$tmp/root.tar" .
    podman rmi -f "$(image_ref tiny)" >/dev/null 2>&1 || true
    podman import --quiet --change "ENV MD_IMAGE_FLAVOUR=tiny" --change "ENV PATH=/bin" \
        "$tmp/root.tar" "$(image_ref tiny)" >/dev/null
    podman save --quiet --format docker-archive -o "$tmp/md-tiny.tar" "$(image_ref tiny)"
    podman save --quiet --format oci-archive -o "$tmp/md-tiny.oci.tar" "$(image_ref tiny)"
    chmod 0644 "$tmp"/md-tiny*.tar
    mv "$tmp/md-tiny.oci.tar" "$dir/md-tiny.oci.tar"
    mv "$tmp/md-tiny.tar" "$dir/md-tiny.tar"   # only complete archives get their final names
    rm -rf "$tmp"
}

# An image a user could make (a tar file says who owns what): md-tiny plus /bin/euid, a program that
# prints its effective uid, setuid root. For the Docker security tests: in a root daemon's store its
# owner is the real root, and running it must still not make the user root.
step_suid_image() {
    local dir=$MDT_SHARED/images
    [[ -s $dir/md-suid.tar ]] && return 0
    log "building image md-suid (setuid root program)"
    local tmp; tmp=$(mktemp -d /var/tmp/mdt-image.XXXXXX)
    mkdir -p "$tmp/root/bin" "$tmp/root/etc" "$tmp/root/tmp" "$tmp/root/proc" "$tmp/root/dev" "$tmp/root/sys"
    cp /bin/busybox "$tmp/root/bin/busybox"
    local t
    for t in sh ls cat echo id true stat; do ln -s busybox "$tmp/root/bin/$t"; done
    printf '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("euid=%%d\\n", (int)geteuid()); return 0; }\n' > "$tmp/euid.c"
    gcc -static -O2 -o "$tmp/root/bin/euid" "$tmp/euid.c"
    chown 0:0 "$tmp/root/bin/euid"
    chmod 4755 "$tmp/root/bin/euid"
    tar -C "$tmp/root" -cf "$tmp/root.tar" .
    podman rmi -f "$(image_ref suid)" >/dev/null 2>&1 || true
    podman import --quiet --change "ENV PATH=/bin" "$tmp/root.tar" "$(image_ref suid)" >/dev/null
    podman save --quiet --format docker-archive -o "$tmp/md-suid.tar" "$(image_ref suid)"
    podman rmi -f "$(image_ref suid)" >/dev/null 2>&1 || true
    chmod 0644 "$tmp/md-suid.tar"
    mv "$tmp/md-suid.tar" "$dir/md-suid.tar"
    rm -rf "$tmp"
}

# md-tiny with one more Dockerfile instruction ($2), saved as the file md-$1.tar on the shared file
# system (only a complete file gets its name).
tiny_variant() {
    local name=$1 change=$2 dir=$MDT_SHARED/images
    [[ -s $dir/md-$name.tar ]] && return 0
    log "building image md-$name ($change)"
    local tmp; tmp=$(mktemp -d /var/tmp/mdt-image.XXXXXX)
    podman load --quiet -i "$dir/md-tiny.tar" >/dev/null
    podman rm -f "mdt-$name-build" >/dev/null 2>&1 || true
    podman create --quiet --name "mdt-$name-build" "$(image_ref tiny)" true >/dev/null
    podman commit --quiet --change "$change" "mdt-$name-build" "$(image_ref "$name")" >/dev/null
    podman rm -f "mdt-$name-build" >/dev/null
    podman save --quiet --format docker-archive -o "$tmp/md-$name.tar" "$(image_ref "$name")"
    podman rmi -f "$(image_ref "$name")" >/dev/null 2>&1 || true
    chmod 0644 "$tmp/md-$name.tar"
    mv "$tmp/md-$name.tar" "$dir/md-$name.tar"
    rm -rf "$tmp"
}

# An image with an ENTRYPOINT (a line on each stream that says it ran, a variable it exports, then the
# task's program): for --container-entrypoint and --container-entrypoint-log. An image with a VOLUME: its anonymous volume must go with the step's container.
step_tiny_variants() {
    tiny_variant entrypoint 'ENTRYPOINT ["/bin/sh", "-c", "echo entrypoint ran; echo entrypoint said >&2; export MD_ENTERED=yes; exec \"$@\"", "entrypoint"]'
    tiny_variant volume 'VOLUME /data'
}

# A real registry (Debian's docker-registry) on the cluster network, $MDT_REGISTRY, holding md-tiny;
# its log (one line per request) is $MDT_REGISTRY_LOG. Podman on every node trusts it over plain HTTP.
step_registry() {
    mkdir -p /etc/containers/registries.conf.d "$MDT_STATE/registry"
    cat > /etc/containers/registries.conf.d/50-mpiexec-docker-test.conf <<EOF
# written by mpiexec-docker's tests/cluster/up.sh: the test registry speaks plain HTTP
[[registry]]
location = "$MDT_REGISTRY"
insecure = true

[[registry]]
location = "$MDT_AUTH_REGISTRY"
insecure = true
EOF
    cat > "$MDT_STATE/registry/config.yml" <<EOF
version: 0.1
log:
  accesslog:
    disabled: false
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $MDT_STATE/registry/data
  delete:
    enabled: true
http:
  addr: $MDT_REGISTRY
EOF
    if ! { [[ -s $MDT_RUN/registry.pid ]] && kill -0 "$(cat "$MDT_RUN/registry.pid")" 2>/dev/null; }; then
        log "starting the test registry on $MDT_REGISTRY"
        setsid docker-registry serve "$MDT_STATE/registry/config.yml" >> "$MDT_REGISTRY_LOG" 2>&1 < /dev/null &
        echo $! > "$MDT_RUN/registry.pid"
        local i
        for i in $(seq 1 50); do
            podman search --tls-verify=false --list-tags "$MDT_REGISTRY/md/none" >/dev/null 2>&1 && break
            grep -q "listening on" "$MDT_REGISTRY_LOG" 2>/dev/null && break
            sleep 0.2
        done
    fi
    # the same store behind a login (bcrypt through the C library's crypt, as htpasswd writes it)
    perl -e 'print "mdt:", crypt("mdt-site-secret", q($2b$05$) . "mdtsaltmdtsaltmdtsalt."), "\n"' \
        > "$MDT_STATE/registry/htpasswd"
    sed -e "s|addr: $MDT_REGISTRY|addr: $MDT_AUTH_REGISTRY|" "$MDT_STATE/registry/config.yml" > "$MDT_STATE/registry/auth.yml"
    printf 'auth:\n  htpasswd:\n    realm: mdt\n    path: %s\n' "$MDT_STATE/registry/htpasswd" >> "$MDT_STATE/registry/auth.yml"
    if ! { [[ -s $MDT_RUN/auth-registry.pid ]] && kill -0 "$(cat "$MDT_RUN/auth-registry.pid")" 2>/dev/null; }; then
        log "starting the test registry with a login on $MDT_AUTH_REGISTRY"
        setsid docker-registry serve "$MDT_STATE/registry/auth.yml" >> "$MDT_REGISTRY_LOG" 2>&1 < /dev/null &
        echo $! > "$MDT_RUN/auth-registry.pid"
    fi
    if [[ ! -e $MDT_STATE/registry/data/docker/registry/v2/repositories/md/tiny/_manifests/tags/latest ]]; then
        podman load --quiet -i "$MDT_SHARED/images/md-tiny.tar" >/dev/null
        podman push --quiet --tls-verify=false "$(image_ref tiny)" "$MDT_REGISTRY/md/tiny:latest"
    fi
}

# Load every image into one store unless it already holds the same image.
load_images() {   # load_images <runner...>   e.g. load_images node_exec node1
    local name
    for name in ${LOAD_IMAGES:-${MDT_IMAGES[*]}}; do
        local archive=$MDT_STATE/images/md-$name.tar
        local want; want=$(stat -c %n-%Y "$(readlink -f "$archive")")
        local engine=${LOAD_ENGINE:-podman}
        local have; have=$("$@" "$engine" image inspect -f '{{.Id}}' "$(image_ref "$name")" 2>/dev/null || true)
        local stamp=$MDT_STATE/loaded/$engine-$(echo "$*" | tr ' /' '__')-$name
        if [[ -n $have && -f $stamp && $(cat "$stamp") == "$want $have" ]]; then continue; fi
        "$@" "$engine" load --quiet -i "$archive" >/dev/null
        have=$("$@" "$engine" image inspect -f '{{.Id}}' "$(image_ref "$name")")
        mkdir -p "$MDT_STATE/loaded"
        echo "$want $have" > "$stamp"
    done
}

step_network() {
    if ! ip link show "$MDT_BRIDGE" >/dev/null 2>&1; then
        ip link add "$MDT_BRIDGE" type bridge
        ip addr add "$MDT_NET.1/24" dev "$MDT_BRIDGE"
        ip link set "$MDT_BRIDGE" up
    fi
    local node
    for node in "${MDT_NODES[@]}"; do
        if [[ ! -e /run/netns/$node ]]; then
            ip netns add "$node"
            ip link add "mdt-$node" type veth peer name eth0 netns "$node"
            ip link set "mdt-$node" master "$MDT_BRIDGE" up
            ip -n "$node" addr add "$(node_ip "$node")/24" dev eth0
            ip -n "$node" link set eth0 up
            ip -n "$node" link set lo up
            ip -n "$node" route add default via "$MDT_NET.1"
        fi
        grep -q "^$(node_ip "$node") $node\$" /etc/hosts || echo "$(node_ip "$node") $node" >> /etc/hosts
    done
}

# Fake GPUs: character devices with NVIDIA's major number, for Slurm's gres and the plugin's device
# selection (no GPU is needed to prove which devices a step gets). Made only where the machine has
# none; down.sh removes what we made.
step_fake_gpus() {
    if [[ ! -e /dev/nvidia0 ]]; then
        local i
        for i in 0 1 2 3; do
            mknod -m 0666 "/dev/nvidia$i" c 195 "$i"
            echo "/dev/nvidia$i" >> "$MDT_RUN/fake-devices"
        done
        if [[ ! -e /dev/nvidiactl ]]; then
            mknod -m 0666 /dev/nvidiactl c 195 255
            echo /dev/nvidiactl >> "$MDT_RUN/fake-devices"
        fi
    fi
    # a CDI spec only over fakes of ours (never over a machine's real GPUs)
    grep -qx /dev/nvidia0 "$MDT_RUN/fake-devices" 2>/dev/null && step_fake_cdi
    return 0
}

# A CDI spec for the fake GPUs, as a vendor's generator writes one (`nvidia-ctk cdi generate`): one
# device per GPU, named by index, with a variable naming it; common edits with the control device, a
# "driver library" mounted at the path a CUDA program loads and the driver's variable. Every node
# reads it from /var/run/cdi, where a site's boot-time generator writes.
step_fake_cdi() {
    local lib=$MDT_RUN/fake-driver/libcuda.so.1 spec=/var/run/cdi/mdt-fake-gpu.yaml i
    mkdir -p "$MDT_RUN/fake-driver" /var/run/cdi
    echo "fake libcuda.so.1 of mpiexec-docker's test cluster" > "$lib"
    chmod 0644 "$lib"
    {
        echo "# written by mpiexec-docker's tests/cluster/up.sh: the test cluster's fake GPUs"
        echo "cdiVersion: 0.5.0"
        echo "kind: nvidia.com/gpu"
        echo "devices:"
        for i in 0 1 2 3; do
            echo "- name: \"$i\""
            echo "  containerEdits:"
            echo "    deviceNodes: [{path: /dev/nvidia$i}]"
            echo "    env: [MDT_FAKE_GPU_$i=nvidia$i]"
        done
        echo "containerEdits:"
        echo "  env: [MDT_FAKE_DRIVER=550.54.fake]"
        echo "  deviceNodes: [{path: /dev/nvidiactl}]"
        echo "  mounts:"
        echo "  - {hostPath: $lib, containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1, options: [ro, nosuid, nodev, bind]}"
    } > "$spec.tmp"
    chmod 0644 "$spec.tmp"
    mv "$spec.tmp" "$spec"
    grep -qx "$spec" "$MDT_RUN/fake-devices" || echo "$spec" >> "$MDT_RUN/fake-devices"
    grep -qx "$lib" "$MDT_RUN/fake-devices" || echo "$lib" >> "$MDT_RUN/fake-devices"
}

# Writes stdin to $1; notes when that changed a file the running daemons had read.
write_config() {
    local new; new=$(cat)
    if [[ -e $1 && $(cat "$1") != "$new" ]]; then CONFIG_CHANGED=1; fi
    printf '%s\n' "$new" > "$1"
}

step_slurm_config() {
    local ctld; ctld=$(hostname)
    mkdir -p /etc/slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd
    grep -q "^$MDT_NET.1 $ctld-mdt\$" /etc/hosts || echo "$MDT_NET.1 $ctld-mdt" >> /etc/hosts
    CONFIG_CHANGED=0
    write_config /etc/slurm/slurm.conf <<EOF
# written by mpiexec-docker's tests/cluster/up.sh: a $MDT_NODE_COUNT-node test cluster on one machine
ClusterName=mdtest
SlurmctldHost=$ctld($MDT_NET.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmdDebug=verbose
SlurmdParameters=config_overrides
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=30
InactiveLimit=0
PlugStackConfig=/etc/slurm/plugstack.conf
GresTypes=gpu
$(for node in "${MDT_NODES[@]}"; do
    echo "NodeName=$node NodeAddr=$(node_ip "$node") CPUs=8 RealMemory=16000 Gres=gpu:4 State=UNKNOWN"
done)
PartitionName=debug Nodes=node[1-$MDT_NODE_COUNT] Default=YES MaxTime=INFINITE State=UP
EOF
    write_config /etc/slurm/gres.conf <<'EOF'
AutoDetect=off
Name=gpu File=/dev/nvidia[0-3]
EOF
    write_config /etc/slurm/cgroup.conf <<'EOF'
CgroupPlugin=cgroup/v1
ConstrainCores=no
ConstrainDevices=yes
ConstrainRAMSpace=yes
EOF
    # (Slurm reads this file at every launch: a change needs no restart. tests/e2e/docker.rs switches the
    # engine to docker while it runs; every other test binary switches it back.)
    # (MDT_PLUGSTACK, when set, is written instead: tests/load_compare.sh starts the daemons with
    # another plugin, or none)
    cat > /etc/slurm/plugstack.conf <<EOF
# written by mpiexec-docker's tests/cluster/up.sh
${MDT_PLUGSTACK:-required $MDT_PLUGIN engine=podman helper=$MDT_HELPER}
EOF
    if [[ $CONFIG_CHANGED == 1 ]] && [[ -s /run/slurmctld.pid || -n $(ls /run/slurmd-node*.pid 2>/dev/null) ]]; then
        log "the Slurm configuration changed: restarting the cluster's daemons"
        bash "$(dirname "$0")/down.sh"
        mkdir -p "$MDT_RUN"
        step_host_fixes
        step_network
        step_fake_gpus
        step_registry
    fi
}

step_daemons() {
    if ! pgrep -x munged >/dev/null; then
        install -d -o munge -g munge -m 0755 /run/munge
        runuser -u munge -- /usr/sbin/munged
        touch "$MDT_RUN/started-munged"
    fi
    if ! { [[ -s /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }; then
        slurmctld
    fi
    local node
    for node in "${MDT_NODES[@]}"; do
        node_pid "$node" >/dev/null && continue
        local dir=$MDT_STATE/nodes/$node
        mkdir -p "$dir/containers" "$dir/local/containers" /var/spool/slurmd
        local u
        for u in "$MDT_USER" "$MDT_USER2"; do
            install -d -o "$u" -g "$u" "$dir/local/containers/$u"
        done
        mkdir -p /run/containers /run/libpod /run/user /run/mdt-node /run/mpiexec-docker /var/lib/docker "$dir/docker"
        log "starting slurmd $node"
        nsenter --net="/run/netns/$node" unshare -m -u --propagation private sh -ec "
            hostname $node
            mount -t tmpfs -o mode=1777 tmpfs /tmp
            mount -t tmpfs -o mode=1777 tmpfs /dev/shm
            mount -t tmpfs -o mode=0755 tmpfs /run/containers
            mount -t tmpfs -o mode=0700 tmpfs /run/libpod
            mount -t tmpfs -o mode=0755 tmpfs /run/user
            mount -t tmpfs -o mode=0755 tmpfs /run/mdt-node
            mount -t tmpfs -o mode=0755 tmpfs /run/mpiexec-docker
            mount --bind $dir/docker /var/lib/docker
            mount --bind $dir/containers /var/lib/containers
            mount --bind $dir/local /var/local
            exec slurmd -N $node"
    done
    local i
    for i in $(seq 1 50); do
        local up=0
        for node in "${MDT_NODES[@]}"; do node_pid "$node" >/dev/null && up=$((up + 1)); done
        [[ $up == "${#MDT_NODES[@]}" ]] && break
        sleep 0.2
    done
    for node in "${MDT_NODES[@]}"; do
        node_pid "$node" >/dev/null || die "slurmd $node did not start: see /var/log/slurm/slurmd-$node.log"
    done
    # nodes left DOWN by an earlier run come back
    scontrol update nodename="node[1-$MDT_NODE_COUNT]" state=resume >/dev/null 2>&1 || true
    for i in $(seq 1 100); do
        sinfo -h -o '%t' 2>/dev/null | grep -qvE '^(idle|mix|alloc)$' || { [[ -n $(sinfo -h -o %t 2>/dev/null) ]] && break; }
        sleep 0.3
    done
    sinfo -h -o '%t' | grep -qvE '^(idle|mix|alloc)$' && die "nodes not idle: $(sinfo -h -N -o '%N %t %E' | tr '\n' ';')"
    return 0
}

# One dockerd per node and one for the login node: a container is made
# in its daemon's namespaces, so each node's daemon runs in that node's namespaces with a store of its
# own. Every namespace finds its own daemon at Docker's default socket: /run/docker.sock links into
# /run/mdt-node, which each node's mount namespace has to itself. The socket is root's alone (no user
# is in group docker): only root, and the plugin acting for a job, may start containers.
start_dockerd() {   # start_dockerd NAME RUNNER...
    local name=$1; shift
    "$@" docker info >/dev/null 2>&1 && return 0
    log "starting dockerd for $name"
    # CDI on (Docker 25 to 27 need it asked for; 28 has it on; older ones ignore the key)
    [[ -e $MDT_RUN/dockerd.json ]] || echo '{"features": {"cdi": true}}' > "$MDT_RUN/dockerd.json"
    "$@" setsid dockerd --config-file "$MDT_RUN/dockerd.json" --data-root /var/lib/docker --exec-root /run/mdt-node/docker \
        --pidfile /run/mdt-node/dockerd.pid -H unix:///run/mdt-node/docker.sock \
        --bridge=none --iptables=false --ip-masq=false --insecure-registry "$MDT_REGISTRY" \
        >> "/var/log/mdt-dockerd-$name.log" 2>&1 < /dev/null &
    local i
    for i in $(seq 1 100); do
        "$@" docker info >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "dockerd for $name did not start: see /var/log/mdt-dockerd-$name.log"
}

step_docker() {
    mkdir -p /run/mdt-node /var/lib/docker
    ln -sfn /run/mdt-node/docker.sock /run/docker.sock
    start_dockerd login env
    local node
    for node in "${MDT_NODES[@]}"; do
        start_dockerd "$node" node_exec "$node"
    done
}

step_load_images() {
    log "loading images into the rootful and rootless stores (login node and each node)"
    # the login node also gets the image without MPI, for the helper's error path
    LOAD_IMAGES="${MDT_IMAGES[*]} nompi" load_images env
    LOAD_IMAGES="${MDT_IMAGES[*]} nompi" load_images as_user "$MDT_USER"
    local node
    # (the scale nodes past the third run registry images only: tests/bench_scale.sh)
    for node in "${MDT_NODES[@]:0:3}"; do
        load_images node_exec "$node"
        load_images node_exec "$node" runuser -u "$MDT_USER" -- env HOME="$(getent passwd "$MDT_USER" | cut -d: -f6)"
        LOAD_ENGINE=docker LOAD_IMAGES=openmpi load_images node_exec "$node"
    done
    LOAD_ENGINE=docker LOAD_IMAGES="openmpi nompi" load_images env
}

step_shared() {
    install -d -m 0755 "$MDT_STATE"
    install -d -m 1777 "$MDT_SHARED"
}

# The plugin built against the stack's own Slurm headers, and the helper, installed into its root.
step_stack_build() {
    log "building the SPANK plugin against the $MDT_STACK stack's Slurm headers"
    local inc=$STACK_DIR/include
    rm -rf "$inc"
    mkdir -p "$inc"
    cp -a "$STACK_ROOT/usr/include/slurm" "$inc/"
    # installed from inside the stack (step_install_package), as on the machine itself
    build_packages "$STACK_ROOT$MDT_STATE/packages" --slurm-include "$inc"
}

# What the stack takes from outside: its MPI images (built here from its suite), the image without
# MPI and the shared image files (md-tiny, md-suid).
step_stack_images() {
    local images=$STACK_ROOT$MDT_STATE/images shared=$STACK_ROOT$MDT_SHARED/images
    install -d "$images" "$STACK_ROOT$MDT_STATE"
    install -d -m 1777 "$STACK_ROOT$MDT_SHARED"
    install -d -m 0755 "$shared"
    local name
    for name in "${MDT_IMAGES[@]}"; do
        local archive; archive=$(image_archive "$name" "$(stack_suite "$MDT_STACK")")
        ln -f "$archive" "$images/$(basename "$archive")"
        find "$images" -name "md-$name-*.tar" ! -name "$(basename "$archive")" -delete
        ln -sfn "$(basename "$archive")" "$images/md-$name.tar"
    done
    ln -f "$MDT_STATE/images/md-nompi.tar" "$images/md-nompi.tar"
    # Intel MPI's wheels, for tests/bench.sh's bare Intel MPI inside the stack (it has no PyPI)
    install -d "$STACK_ROOT$MDT_STATE/wheels"
    local wheel
    for wheel in "$MDT_STATE"/wheels/*.whl; do
        [[ $wheel -ef $STACK_ROOT$MDT_STATE/wheels/${wheel##*/} ]] || ln -f "$wheel" "$STACK_ROOT$MDT_STATE/wheels/"
    done
    for name in md-tiny.tar md-tiny.oci.tar md-suid.tar md-entrypoint.tar md-volume.tar; do
        [[ $MDT_SHARED/images/$name -ef $shared/$name ]] || ln -f "$MDT_SHARED/images/$name" "$shared/$name"
    done
}

# A stack in a root file system of its own: made and started from here, then brought up from inside.
main_stack() {
    mkdir -p "$MDT_RUN" "$MDT_STATE"
    local t0=$SECONDS
    step_packages
    step_host_fixes
    step_shared
    stack_rootfs
    step_stack_build
    step_nompi_image
    step_tiny_image
    step_suid_image
    step_tiny_variants
    step_stack_images
    stack_start
    stack_exec env MDT_INSIDE=1 MDT_STACK="$MDT_STACK" MDT_NODE_COUNT="$MDT_NODE_COUNT" bash "$MDT_TOP/tests/cluster/up.sh"
    log "stack up in $((SECONDS - t0)) s"
}

main() {
    if [[ ${MDT_ARGS[0]:-} == --packages ]]; then
        step_packages
        return
    fi
    if outside_stack; then
        main_stack
        return
    fi
    mkdir -p "$MDT_RUN" "$MDT_STATE"
    local t0=$SECONDS
    # inside a stack, packages, builds and images came from outside
    [[ -n ${MDT_INSIDE:-} ]] || step_packages
    step_host_fixes
    step_users
    step_shared
    if [[ -n ${MDT_INSIDE:-} ]]; then step_install_package; else step_build; fi
    [[ -n ${MDT_INSIDE:-} ]] || step_images
    step_network
    step_fake_gpus
    [[ -n ${MDT_INSIDE:-} ]] || step_tiny_image
    [[ -n ${MDT_INSIDE:-} ]] || step_suid_image
    [[ -n ${MDT_INSIDE:-} ]] || step_tiny_variants
    step_registry
    step_slurm_config
    step_daemons
    step_docker
    step_load_images
    log "cluster up in $((SECONDS - t0)) s: $(sinfo -h -N -o '%N:%t' | tr '\n' ' ')"
}

# (one line: bash has read it whole before main runs, so an edit of this file during a run cannot
# make the running script read on into the edited text)
main; exit
