#!/usr/bin/env bash
# The demo: sets up everything on a fresh Debian 12 machine (as root) and runs an MPI hello world in
# containers across the 3-node test cluster, as the non-root test user with rootless Podman.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bash "$top/tests/cluster/up.sh"
source "$top/tests/cluster/lib.sh"
cd "$MDT_SHARED"
out=$MDT_SHARED/demo-$$.out
echo "+ sbatch -N3 -n6 --wait --wrap 'mpiexec_docker localhost/md-openmpi mpi_hello'   (as $MDT_USER)"
as_user "$MDT_USER" bash -c "cd $MDT_SHARED && sbatch -N3 -n6 --wait -o $out --wrap 'mpiexec_docker $(image_ref openmpi) mpi_hello' >/dev/null"
sort "$out"
rm -f "$out"
