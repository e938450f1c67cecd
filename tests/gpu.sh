#!/bin/bash
# GPUs that CUDA can use, on a real NVIDIA GPU machine (not part of tests/run.sh: the test cluster's GPUs
# are fake). Needs the NVIDIA driver (nvidia-smi), nvidia-container-toolkit (nvidia-ctk), Podman, gcc, and
# the package installed (packaging/build.sh). As root:
#
#   tests/gpu.sh [IMAGE]        # IMAGE: any image with glibc (default debian:bookworm-slim)
#
# 1. writes the node's CDI spec with nvidia-ctk when /etc/cdi and /var/run/cdi have none;
# 2. runs `nvidia-smi -L` through `run_in_docker --gpus all` (the tool comes from the host through CDI:
#    the image has none) and compares the list with the host's;
# 3. builds a small driver-API program on the host (it loads libcuda.so.1 at run time: no CUDA toolkit
#    needed), runs it in the container and compares the GPU count and names with the host's;
# 4. the same with `--gpus 0` (one GPU) and `--gpus none` (none: libcuda finds no device, or is absent).
# Prints a Markdown block for BENCHMARKS.md; exits non-zero on the first difference.
set -euo pipefail
image=${1:-docker.io/library/debian:bookworm-slim}
fail() { echo "tests/gpu.sh: $*" >&2; exit 1; }
command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver"
command -v nvidia-ctk >/dev/null || fail "no nvidia-ctk: install nvidia-container-toolkit"
command -v run_in_docker >/dev/null || fail "run_in_docker is not installed: dpkg -i the package (packaging/build.sh)"
host_list=$(nvidia-smi -L) || fail "nvidia-smi -L failed: the driver is not working"

if ! ls /etc/cdi/*.yaml /etc/cdi/*.json /var/run/cdi/*.yaml /var/run/cdi/*.json >/dev/null 2>&1; then
    mkdir -p /var/run/cdi
    nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > cuda_probe.c <<'EOF'
/* The CUDA driver API through dlopen: what a CUDA program needs from the node's driver. */
#include <dlfcn.h>
#include <stdio.h>
typedef int (*init_t)(unsigned);
typedef int (*count_t)(int *);
typedef int (*get_t)(int *, int);
typedef int (*name_t)(char *, int, int);
int main(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) { printf("no libcuda: %s\n", dlerror()); return 2; }
    init_t cuInit = (init_t)dlsym(lib, "cuInit");
    count_t count = (count_t)dlsym(lib, "cuDeviceGetCount");
    get_t get = (get_t)dlsym(lib, "cuDeviceGet");
    name_t name = (name_t)dlsym(lib, "cuDeviceGetName");
    int rc = cuInit(0), n = 0;
    if (rc != 0) { printf("cuInit: error %d\n", rc); return 3; }
    count(&n);
    printf("devices %d\n", n);
    for (int i = 0; i < n; i++) {
        int dev; char buf[256];
        get(&dev, i);
        name(buf, sizeof buf, dev);
        printf("device %d: %s\n", i, buf);
    }
    return 0;
}
EOF
gcc -O2 -o cuda_probe cuda_probe.c -ldl
host_probe=$(./cuda_probe)
host_count=$(nvidia-smi -L | wc -l)

in_list=$(run_in_docker --gpus all "$image" nvidia-smi -L)
[[ $in_list == "$host_list" ]] || fail "nvidia-smi -L differs in the container: '$in_list' (host: '$host_list')"
in_probe=$(run_in_docker --gpus all "$image" ./cuda_probe)
[[ $in_probe == "$host_probe" ]] || fail "the CUDA probe differs in the container: '$in_probe' (host: '$host_probe')"
one=$(run_in_docker --gpus 0 "$image" ./cuda_probe | head -1)
[[ $one == "devices 1" ]] || fail "--gpus 0 gave '$one', not one device"
none=$(run_in_docker --gpus none "$image" ./cuda_probe 2>&1 | head -1 || true)
[[ $none != "devices "[1-9]* ]] || fail "--gpus none still gave '$none'"

cat <<EOF
### Real GPU (tests/gpu.sh, $(date -u +%Y-%m-%d))

- machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1), $host_count GPU(s); engine: $(podman --version)
- \`run_in_docker --gpus all $image nvidia-smi -L\` (the tool from the host through CDI): same list as the host
- CUDA driver API probe in the container: \`$(echo "$in_probe" | head -1)\`, names as on the host
- \`--gpus 0\`: \`$one\`; \`--gpus none\`: \`$none\`
EOF
