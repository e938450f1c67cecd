#!/usr/bin/env bash
# The demo: sets up everything on a fresh Debian 12 machine (as root) and runs an MPI hello world in
# containers on the 3-node test cluster.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bash "$top/tests/cluster/up.sh"
source "$top/tests/cluster/lib.sh"
cd "$MDT_SHARED"
echo "+ srun -N1 -w node1 podman run --rm --net=host md-openmpi mpiexec --allow-run-as-root -n 2 mpi_hello"
srun -N1 -w node1 podman run --rm --net=host "$(image_ref openmpi)" mpiexec --allow-run-as-root -n 2 mpi_hello
