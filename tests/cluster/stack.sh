# A test stack other than the machine's own (sourced by lib.sh): a Debian root file system made with
# mmdebstrap from Debian's packages, in which the same 3-node cluster runs as it runs on the machine
# itself for debian12. The stack lives in namespaces of its own, so that both stacks can be up at once:
#
#   mount  the root file system (pivot_root), its own /dev, /run, /tmp and cgroup mounts
#   pid    its own process tree under catatonit (ps, leftovers and stray-step checks see the stack only)
#   net    its own loopback, bridge and node namespaces (the same addresses as the other stack)
#   uts    its own host names
#   cgroup its own cgroup root (/mdt-STACK in every hierarchy): Slurm's slurm_node1 is the stack's own
#
# The kernel is the machine's. Everything it starts is in its pid namespace: killing its init ends it.

# The Debian suite of each stack (debian12 is the machine itself).
stack_suite() {
    case $1 in
        debian12) echo bookworm ;;
        debian13) echo trixie ;;
        *) die "unknown stack '$1' (known: debian12, debian13)" ;;
    esac
}

# What a stack's root file system holds (Debian's package names; the same set as PACKAGES of up.sh,
# less what only the machine itself needs: image building and the Rust build happen outside).
STACK_PACKAGES=(podman crun uidmap slirp4netns fuse-overlayfs catatonit passt
                slurm-wlm slurm-client munge libslurm-dev
                openmpi-bin libopenmpi-dev mpich libmpich-dev
                iproute2 psmisc util-linux procps mawk hostname file binutils gcc libc6-dev python3
                docker-registry busybox-static docker.io docker-cli rpm man-db squashfs-tools squashfs-tools-ng)

# The host pid of the stack's init, when it runs.
stack_pid() {
    [[ -s $STACK_PIDFILE ]] && kill -0 "$(cat "$STACK_PIDFILE")" 2>/dev/null && cat "$STACK_PIDFILE"
}

# nsenter's options that enter every namespace of the stack, its root and its working directory.
STACK_NS=(-m -u -n -p -C -r -w)

# Runs a command inside the stack (its login node), as root, from /.
stack_exec() {
    local pid; pid=$(stack_pid) || die "the $MDT_STACK stack is not up: tests/cluster/up.sh --stack $MDT_STACK"
    nsenter -t "$pid" "${STACK_NS[@]}" -- "$@"
}

# The root file system: built once per package list (a stamp holds the key), into a new directory
# that replaces the old one only when complete.
stack_rootfs() {
    local suite; suite=$(stack_suite "$MDT_STACK")
    local key; key=$(echo "$suite ${STACK_PACKAGES[*]} v1" | sha256sum | cut -c1-16)
    [[ -d $STACK_ROOT && $(cat "$STACK_DIR/rootfs.key" 2>/dev/null) == "$key" ]] && return 0
    stack_pid >/dev/null && die "the $MDT_STACK stack runs from an older root file system: tests/cluster/down.sh --stack $MDT_STACK first"
    log "building the $MDT_STACK root file system ($suite) with mmdebstrap"
    mkdir -p "$STACK_DIR"
    local tmp=$STACK_DIR/rootfs.new
    rm -rf "$tmp"
    local list; list=$(IFS=,; echo "${STACK_PACKAGES[*]}")
    mmdebstrap --quiet --variant=apt --include="$list" \
        --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb' \
        "$suite" "$tmp" http://deb.debian.org/debian
    rm -rf "$STACK_ROOT"
    mv "$tmp" "$STACK_ROOT"
    echo "$key" > "$STACK_DIR/rootfs.key"
}

# The cgroup mounts of the machine, as "TYPE OPTIONS DIR" (DIR relative to /sys/fs/cgroup).
host_cgroup_mounts() {
    awk '$3 == "cgroup" || $3 == "cgroup2" { print $3, $4, $2 }' /proc/self/mounts |
        while read -r type opts dir; do
            [[ $dir == /sys/fs/cgroup/* ]] || continue
            # keep the controllers (and name=), not the mount flags
            local keep=() o
            for o in ${opts//,/ }; do
                case $o in rw|ro|relatime|noatime|nosuid|nodev|noexec|nsdelegate|memory_recursiveprot) ;; *) keep+=("$o") ;; esac
            done
            local joined; joined=$(IFS=,; echo "${keep[*]}")
            [[ $type == cgroup && $joined == name=* ]] && joined="none,$joined"
            echo "$type ${joined:-rw} ${dir#/sys/fs/cgroup/}"
        done
}

# The checkout the stack runs from: its path and the directory's identity (device:inode).
stack_top_id() {
    echo "$MDT_TOP $(stat -c %d:%i "$MDT_TOP")"
}

# The stack's init: moves itself into the stack's cgroup, makes its namespaces, mounts the root file
# system's pieces, makes it its root and stays there as catatonit (which reaps orphans, as init does
# on a node).
stack_start() {
    if stack_pid >/dev/null; then
        # the stack sees one checkout of the project (bind-mounted at start): another one restarts it,
        # and so does a new checkout at the same path (the old directory is what the stack still sees)
        [[ $(cat "$STACK_DIR/top" 2>/dev/null) == "$(stack_top_id)" ]] && return 0
        log "the $MDT_STACK stack runs from $(cat "$STACK_DIR/top" 2>/dev/null): restarting it for $MDT_TOP"
        stack_stop
    fi
    stack_top_id > "$STACK_DIR/top"
    log "starting the $MDT_STACK stack (its own mount, pid, network, uts and cgroup namespaces)"
    local cg=mdt-$MDT_STACK mounts
    mounts=$(host_cgroup_mounts)
    local type opts dir
    while read -r type opts dir; do
        mkdir -p "/sys/fs/cgroup/$dir/$cg"
        if [[ -e /sys/fs/cgroup/$dir/$cg/cpuset.cpus ]]; then
            cat "/sys/fs/cgroup/$dir/cpuset.cpus" > "/sys/fs/cgroup/$dir/$cg/cpuset.cpus"
            cat "/sys/fs/cgroup/$dir/cpuset.mems" > "/sys/fs/cgroup/$dir/$cg/cpuset.mems"
        fi
    done <<< "$mounts"
    mkdir -p "$(dirname "$STACK_PIDFILE")"
    # the login node's name, on the cluster network (slurmd and slurmctld call srun back there)
    grep -q " mdt-$MDT_STACK\$" "$STACK_ROOT/etc/hosts" || echo "$MDT_NET.1 mdt-$MDT_STACK" >> "$STACK_ROOT/etc/hosts"
    local init=$STACK_DIR/init.sh
    cat > "$init" <<EOF
#!/bin/bash
# written by tests/cluster/up.sh --stack $MDT_STACK: the stack's init (pid 1 of its pid namespace)
set -e
R=$STACK_ROOT
mount --make-rprivate /
mount --bind "\$R" "\$R"
mount -t proc proc "\$R/proc"
mount --rbind /sys "\$R/sys"
umount -R "\$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755 cgroup "\$R/sys/fs/cgroup"
while read -r type opts dir; do
    mkdir -p "\$R/sys/fs/cgroup/\$dir"
    mount -t "\$type" -o "\$opts" "\$type" "\$R/sys/fs/cgroup/\$dir"
done <<'MOUNTS'
$mounts
MOUNTS
# a /dev of its own: the usual nodes from the machine, its own pts, shm and mqueue
mount -t tmpfs -o mode=0755,nosuid tmpfs "\$R/dev"
for n in null zero full random urandom tty fuse net/tun; do
    [[ -e /dev/\$n ]] || continue
    mkdir -p "\$(dirname "\$R/dev/\$n")"
    touch "\$R/dev/\$n"
    mount --bind "/dev/\$n" "\$R/dev/\$n"
done
mkdir -p "\$R/dev/pts" "\$R/dev/shm" "\$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "\$R/dev/pts"
ln -s pts/ptmx "\$R/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "\$R/dev/shm"
mount -t mqueue mqueue "\$R/dev/mqueue"
ln -s /proc/self/fd "\$R/dev/fd"
ln -s /proc/self/fd/0 "\$R/dev/stdin"; ln -s /proc/self/fd/1 "\$R/dev/stdout"; ln -s /proc/self/fd/2 "\$R/dev/stderr"
mount -t tmpfs -o mode=0755 tmpfs "\$R/run"
mount -t tmpfs -o mode=1777 tmpfs "\$R/tmp"
# the project, at its own path: the stack's up.sh and the test binaries run from it
mkdir -p "\$R$MDT_TOP"
mount --bind "$MDT_TOP" "\$R$MDT_TOP"
hostname mdt-$MDT_STACK
ip link set lo up
# the root file system becomes the mount namespace's root (pivot_root, not chroot: the kernel lets no
# chrooted process make a user namespace, which rootless Podman needs), shared as on a booted machine
mkdir -p "\$R/.old-root"
cd "\$R"
pivot_root . .old-root
umount -l /.old-root
rmdir /.old-root
mount --make-rshared /
exec /usr/bin/catatonit -P
EOF
    chmod 0755 "$init"
    # the stack's cgroup first, then the namespaces (a cgroup namespace is rooted where it is made)
    (
        for d in $(awk '{print $3}' <<< "$mounts"); do echo "$BASHPID" > "/sys/fs/cgroup/$d/$cg/cgroup.procs"; done
        exec setsid unshare --mount --uts --net --pid --cgroup --fork --propagation private "$init"
    ) > "$STACK_DIR/init.log" 2>&1 < /dev/null &
    local unshare_pid=$! i child=
    for i in $(seq 1 100); do
        child=$(pgrep -P "$unshare_pid" | head -1 || true)
        if [[ -n $child && $(cat "/proc/$child/comm" 2>/dev/null) == catatonit ]]; then break; fi
        kill -0 "$unshare_pid" 2>/dev/null || die "the $MDT_STACK stack did not start: $(cat "$STACK_DIR/init.log")"
        sleep 0.1
    done
    [[ -n $child && $(cat "/proc/$child/comm" 2>/dev/null) == catatonit ]] ||
        die "the $MDT_STACK stack did not start: $(cat "$STACK_DIR/init.log")"
    echo "$child" > "$STACK_PIDFILE"
}

# Ends the stack: first its own down.sh inside it (containers and Podman's records, bounded), from the
# checkout it was started with; then its init's death ends every process of its pid namespace, and its
# mounts and network namespaces go with the last of them. Then its cgroups are removed, deepest first.
stack_stop() {
    local pid; pid=$(stack_pid) || { rm -f "$STACK_PIDFILE"; return 0; }
    local top; top=$(cut -d' ' -f1 "$STACK_DIR/top" 2>/dev/null || echo "$MDT_TOP")
    timeout 300 nsenter -t "$pid" "${STACK_NS[@]}" -- \
        env MDT_INSIDE=1 MDT_STACK="$MDT_STACK" bash "$top/tests/cluster/down.sh" || true
    kill -KILL "$pid"
    local i
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$STACK_PIDFILE"
    local cg=mdt-$MDT_STACK dir
    for dir in /sys/fs/cgroup/*/; do
        [[ -d $dir$cg ]] || continue
        for i in $(seq 1 50); do
            find "$dir$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d $dir$cg ]] || break
            sleep 0.1
        done
    done
}
