#!/usr/bin/env bash
# Benchmarks of mpiexec-docker against bare metal, both measured in the same run on the test cluster.
#   tests/bench.sh [--stack debian12|debian13] [REPS]
#                              (as root; runs the MPI parts as the test user with rootless Podman)
# Prints Markdown tables (the source of BENCHMARKS.md):
#   1. launch: `mpiexec_docker IMAGE -np 2 hello` against bare `mpiexec -np 2 hello` (Open MPI 4.1.4 and
#      MPICH 4.0.2 on the host and in the images), median of REPS runs;
#   2. data path: our ping-pong (Open MPI) and Intel MPI's IMB-MPI1 PingPong, container against bare;
#   3. relay: a relayed srun round trip against the host's srun, in the same allocation;
#   4. multi-node launch: mpiexec_docker against bare mpiexec in the same 3-node allocation;
#   5. step launch: `srun --container-image=IMAGE -N1 -n{1,4,16} true` against the bare step, as a job's
#      first step and as its later steps (back to back, and 1 s apart: spare containers);
#   6. image distribution: cold (registry pull, image file load) and warm (cached) 3-node steps.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
source "$top/tests/cluster/lib.sh"
stack_args "$@"
REPS=${MDT_ARGS[0]:-10}
bash "$top/tests/cluster/up.sh" --stack "$MDT_STACK" >&2
# a stack in a root of its own is measured from inside it, bare metal there too
if outside_stack; then
    stack_exec env MDT_INSIDE=1 MDT_STACK="$MDT_STACK" bash "$top/tests/bench.sh" "$REPS"
    exit
fi
echo "Stack: $MDT_STACK — $(srun --version), $(podman --version), $(mpirun.openmpi --version 2>&1 | head -1)"
echo

W=$MDT_SHARED/bench
rm -rf "$W"; install -d -o "$MDT_USER" -g "$MDT_USER" "$W"
cp "$top/examples/hello/hello.c" "$top/examples/pingpong/pingpong.c" "$W/"
chown "$MDT_USER:$MDT_USER" "$W"/*.c
U() { as_user "$MDT_USER" bash -c "cd $W && $1"; }

# host binaries against the host's MPI, image binaries against the image's
U "mpicc.openmpi -O2 -o hello_ompi hello.c && mpicc.openmpi -O2 -o pingpong_ompi pingpong.c"
U "mpicc.mpich -O2 -o hello_mpich hello.c"
U "run_in_docker $(image_ref openmpi) mpicc -O2 -o pingpong_img pingpong.c"

# Intel MPI on the host: the same wheels as the image, unpacked beside the test state
IMPI=$MDT_STATE/impi-host
if [[ ! -x $IMPI/bin/IMB-MPI1 ]]; then
    mkdir -p "$IMPI"
    intel_mpi_tree "$IMPI"
fi

# median and min of the wall-clock seconds of REPS runs of a command (as the test user)
timeit() {
    local cmd=$1 i t0 t1
    U "$cmd" >/dev/null 2>&1   # warm-up (first rootless run maps the image for keep-id)
    for i in $(seq "$REPS"); do
        t0=$(date +%s.%N); U "$cmd" >/dev/null 2>&1; t1=$(date +%s.%N)
        echo "$t0 $t1"
    done | python3 -c '
import sys, statistics
d = [float(b) - float(a) for a, b in (l.split() for l in sys.stdin)]
print(f"{statistics.median(d):.3f} {min(d):.3f}")'
}

# Table of two ping-pong outputs (ours: "bytes usec MB/s"; IMB: "bytes reps usec MB/s"), the best
# latency and bandwidth per size over all the runs appended to each file.
compare_pingpong() {
    python3 - "$1" "$2" <<'PY'
import sys
def load(path):
    rows = {}
    for line in open(path):
        p = line.split()
        if len(p) in (3, 4) and p[0].isdigit():
            n, lat, bw = int(p[0]), float(p[-2]), float(p[-1])
            old = rows.get(n)
            rows[n] = (min(lat, old[0]), max(bw, old[1])) if old else (lat, bw)
    return rows
bare, cont = load(sys.argv[1]), load(sys.argv[2])
print("| bytes | bare µs | container µs | bare MB/s | container MB/s | bandwidth ratio |")
print("| --- | --- | --- | --- | --- | --- |")
for n in sorted(bare):
    if n in cont and n in (0, 1, 1024, 65536, 1048576, 4194304):
        (bl, bb), (cl, cb) = bare[n], cont[n]
        ratio = f"{cb / bb:.3f}" if bb else "–"
        print(f"| {n} | {bl:.3f} | {cl:.3f} | {bb:.1f} | {cb:.1f} | {ratio} |")
PY
}

echo "## Launch on one machine (login node, rootless Podman, $REPS runs, seconds)"
echo
echo "| MPI | bare median | bare min | mpiexec_docker median | min | added (median) |"
echo "| --- | --- | --- | --- | --- | --- |"
for flavour in openmpi mpich; do
    case $flavour in
        openmpi) bare="mpiexec.openmpi -np 2 ./hello_ompi" ;;
        mpich)   bare="mpiexec.mpich -np 2 ./hello_mpich" ;;
    esac
    read -r bm bn < <(timeit "$bare")
    read -r cm cn < <(timeit "mpiexec_docker $(image_ref $flavour) -np 2 mpi_hello")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$flavour" "$bm" "$bn" "$cm" "$cn" "$(python3 -c "print(f'{$cm - $bm:.3f}')")"
done
read -r pm pn < <(timeit "podman run --rm --network host --ipc host --pid host --userns keep-id $(image_ref openmpi) true")
echo
echo "For scale: one \`podman run --rm … true\` of the same image: median $pm s, min $pn s."
echo

# both ranks pinned to distinct cores, bare and container alike: on 2 cores, unpinned ranks that
# land on one core make the numbers swing by 3x between runs
OMPI_PIN="--bind-to core --map-by core"
echo "## Data path: ping-pong, 2 ranks on one node, pinned to cores 0 and 1 (container against bare)"
echo
echo "Our ping-pong (examples/pingpong), $(mpirun.openmpi --version 2>&1 | head -1 | grep -o "[0-9][0-9.]*$" | sed "s/^/Open MPI /"), half round trip, best of 3 runs per size:"
echo
# three alternating runs each; per size the best (this 2-core VM is noisy)
for i in 1 2 3; do
    U "mpiexec.openmpi -np 2 $OMPI_PIN ./pingpong_ompi" >> "$W/pp-bare.txt"
    U "mpiexec_docker $(image_ref openmpi) -np 2 $OMPI_PIN ./pingpong_img" >> "$W/pp-cont.txt"
done
compare_pingpong "$W/pp-bare.txt" "$W/pp-cont.txt"
echo
echo "Intel MPI 2021.19 \`IMB-MPI1 PingPong\` (FI_PROVIDER=tcp, shared memory within the node), best of 3 runs per size:"
echo
IMB="-genv I_MPI_PIN_PROCESSOR_LIST 0,1 IMB-MPI1 PingPong -msglog 0:22 -iter 2000"
for i in 1 2 3; do
    U "export PATH=$IMPI/bin:\$PATH LD_LIBRARY_PATH=$IMPI/lib I_MPI_HYDRA_BOOTSTRAP=fork FI_PROVIDER=tcp; mpiexec -n 2 $IMB" >> "$W/imb-bare.txt"
    U "mpiexec_docker $(image_ref intelmpi) -n 2 $IMB" >> "$W/imb-cont.txt"
done
compare_pingpong "$W/imb-bare.txt" "$W/imb-cont.txt"
echo

echo "## Relay (inside one 2-node allocation, 20 calls each, milliseconds per call)"
echo
job_out=$W/relay.txt
cat > "$W/relay-loop.sh" <<'EOF'
# microseconds per call of "$@", over 20 calls
loop() { local t0 i; t0=$(date +%s%N); for i in $(seq 20); do "$@" >/dev/null 2>&1; done; echo $(( ($(date +%s%N) - t0) / 20000 )); }
EOF
cat > "$W/relay-job.sh" <<EOF
#!/bin/bash
source ./relay-loop.sh
echo direct-version \$(loop srun --version)
echo direct-true \$(loop srun -N1 -n1 true)
run_in_docker $(image_ref openmpi) bash -c 'source ./relay-loop.sh; echo relayed-version \$(loop srun --version); echo relayed-true \$(loop srun -N1 -n1 true)'
EOF
chown "$MDT_USER:$MDT_USER" "$W"/relay-*.sh
U "sbatch --wait -N2 -n2 -t 5 -o $job_out relay-job.sh" >/dev/null
python3 - "$job_out" <<'PY'
import sys
v = {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 2 and p[1].lstrip("-").isdigit():
        v[p[0]] = int(p[1]) / 1000
print("| call | host srun | through the relay | added |")
print("| --- | --- | --- | --- |")
print(f"| `srun --version` (relay round trip only) | {v['direct-version']:.1f} | {v['relayed-version']:.1f} | {v['relayed-version'] - v['direct-version']:.1f} |")
print(f"| `srun -N1 -n1 true` (remote side in a container) | {v['direct-true']:.1f} | {v['relayed-true']:.1f} | {v['relayed-true'] - v['direct-true']:.1f} |")
PY
echo

echo "## Multi-node launch (one 3-node allocation, 3 ranks, seconds, median of 5)"
echo
job_out=$W/multi.txt
cat > "$W/multi-job.sh" <<EOF
#!/bin/bash
t() { local t0=\$(date +%s%N); "\$@" >/dev/null 2>&1; echo \$(( (\$(date +%s%N) - t0) / 1000000 )); }
mpiexec_docker $(image_ref openmpi) mpi_hello >/dev/null 2>&1   # warm-up
for i in 1 2 3 4 5; do
    echo bare \$(t mpiexec.openmpi ./hello_ompi)
    echo container \$(t mpiexec_docker $(image_ref openmpi) mpi_hello)
done
EOF
chown "$MDT_USER:$MDT_USER" "$W/multi-job.sh"
U "sbatch --wait -N3 -n3 -t 5 -o $job_out multi-job.sh" >/dev/null
python3 - "$job_out" <<'PY'
import sys, statistics
v = {"bare": [], "container": []}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 2 and p[0] in v:
        v[p[0]].append(int(p[1]) / 1000)
b, c = statistics.median(v["bare"]), statistics.median(v["container"])
print("| launcher | median s |")
print("| --- | --- |")
print(f"| bare `mpiexec` (Open MPI) | {b:.3f} |")
print(f"| `mpiexec_docker` | {c:.3f} |")
print(f"| added | {c - b:.3f} |")
PY
echo

echo "## Step launch with --container-image (one node, rootless Podman, seconds, median of $REPS)"
echo
echo "| tasks | bare \`srun -N1 -nN true\` | with \`--container-image\` | added |"
echo "| --- | --- | --- | --- |"
for n in 1 4 16; do
    read -r bm _ < <(timeit "srun -N1 -n$n --overcommit true")
    read -r cm _ < <(timeit "srun -N1 -n$n --overcommit --container-image=$(image_ref openmpi) true")
    printf '| %s | %s | %s | %s |\n' "$n" "$bm" "$cm" "$(python3 -c "print(f'{$cm - $bm:.3f}')")"
done
echo

echo "## Steps of one job (one node, rootless Podman, seconds, median of $REPS steps)"
echo
echo "Inside one allocation (\`sbatch -N1 -n16 --overcommit\`), after two warm-up steps: back to back, and with 1 s between"
echo "steps (the next step's spare container is ready by then); and a job of 100 one-task steps in a row."
echo
cat > "$W/job-steps.sh" <<EOF
#!/bin/bash
t() { local t0=\$(date +%s.%N); "\$@" >/dev/null 2>&1; echo \$(date +%s.%N) \$t0; }
med() { python3 -c 'import sys, statistics; print(f"{statistics.median(float(b) - float(a) for b, a in (l.split() for l in sys.stdin)):.3f}")'; }
img=$(image_ref openmpi)
for n in 1 4 16; do
    for c in "" "--container-image=\$img"; do
        t srun -n\$n --overcommit \$c true >/dev/null; t srun -n\$n --overcommit \$c true >/dev/null
        echo "back \$n \${c:+c} \$(for i in \$(seq $REPS); do t srun -n\$n --overcommit \$c true; done | med)"
        echo "gap \$n \${c:+c} \$(for i in \$(seq $REPS); do sleep 1; t srun -n\$n --overcommit \$c true; done | med)"
    done
done
for c in "" "--container-image=\$img"; do
    t0=\$(date +%s.%N); for i in \$(seq 100); do srun -n1 \$c true >/dev/null 2>&1; done
    echo "hundred 1 \${c:+c} \$(python3 -c "print(f'{\$(date +%s.%N) - \$t0:.2f}')")"
done
EOF
U "sbatch --wait -N1 -n16 --overcommit -o job-steps.out job-steps.sh >/dev/null"
python3 - "$W/job-steps.out" <<'PY'
import sys
v = {}
for line in open(sys.argv[1]):
    w = line.split()
    if len(w) == 4:
        v[(w[0], w[1], w[2])] = float(w[3])
    elif len(w) == 3 and w[0] in ("back", "gap", "hundred"):
        v[(w[0], w[1], "bare")] = float(w[2])
print("| tasks | bare step | container step, back to back | added | bare step, 1 s apart | container step, 1 s apart | added |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for n in ("1", "4", "16"):
    b, c = v[("back", n, "bare")], v[("back", n, "c")]
    gb, g = v[("gap", n, "bare")], v[("gap", n, "c")]
    print(f"| {n} | {b:.3f} | {c:.3f} | {c - b:.3f} | {gb:.3f} | {g:.3f} | {g - gb:.3f} |")
b, c = v[("hundred", "1", "bare")], v[("hundred", "1", "c")]
print()
print(f"A job of 100 one-task steps in a row: bare {b:.2f} s, with `--container-image` {c:.2f} s (+{c - b:.2f} s).")
PY
echo

echo "## Image distribution: cold and warm start of a 3-node step (rootless Podman, seconds, median of 3)"
echo
# a 200 MB image no node has (busybox and one random 200 MB layer), in the test registry and as a file
# on the shared file system
BIG=$MDT_REGISTRY/md/bench-big:latest
BIGFILE=$MDT_SHARED/images/md-bench-big.tar
if [[ ! -s $BIGFILE ]]; then
    random_image localhost/md-bench-big:latest 200M
    podman save --quiet -o "$BIGFILE.partial" localhost/md-bench-big:latest
    chmod 0644 "$BIGFILE.partial"; mv "$BIGFILE.partial" "$BIGFILE"
    podman push --quiet localhost/md-bench-big:latest "$BIG"
fi
forget_big() {
    local node
    for node in "${MDT_NODES[@]}"; do
        node_exec "$node" runuser -u "$MDT_USER" -- env HOME="/home/$MDT_USER" bash -c \
            "podman rmi -f $BIG >/dev/null 2>&1; mpiexec_docker images prune >/dev/null 2>&1" || true
    done
}
once() { local t0 t1; t0=$(date +%s.%N); U "$1" >/dev/null 2>&1; t1=$(date +%s.%N); python3 -c "print(f'{$t1 - $t0:.3f}')"; }
med() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
bare=(); reg_cold=(); reg_warm=(); file_cold=(); file_warm=()
for i in 1 2 3; do
    bare+=("$(once "srun -N3 -n3 true")")
    forget_big
    reg_cold+=("$(once "srun -N3 -n3 --container-image=$BIG true")")
    reg_warm+=("$(once "srun -N3 -n3 --container-image=$BIG true")")
    forget_big
    file_cold+=("$(once "srun -N3 -n3 --container-image=$BIGFILE true")")
    file_warm+=("$(once "srun -N3 -n3 --container-image=$BIGFILE true")")
done
forget_big
b=$(med "${bare[@]}")
echo "| step | median s | added over bare |"
echo "| --- | --- | --- |"
echo "| bare \`srun -N3 -n3 true\` | $b | |"
for row in "registry, cold (200 MB pulled by each node):reg_cold" "registry, warm (cached):reg_warm" \
           "image file on the shared file system, cold (loaded by each node):file_cold" "image file, warm (cached):file_warm"; do
    name=${row%%:*}; arr=${row##*:}
    eval "vals=(\"\${${arr}[@]}\")"
    m=$(med "${vals[@]}")
    echo "| $name | $m | $(python3 -c "print(f'{$m - $b:.3f}')") |"
done
