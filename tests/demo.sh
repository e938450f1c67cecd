#!/usr/bin/env bash
# The demo: sets up everything on a fresh Debian 12 machine (as root) and runs an MPI hello world across
# the 3-node test cluster with --container-image, as the non-root test user (rootless Podman): Slurm
# launches the ranks directly (PMIx), each task inside the Open MPI image.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bash "$top/tests/cluster/up.sh"
source "$top/tests/cluster/lib.sh"
cd "$MDT_SHARED"
cmd="srun --mpi=pmix --container-image=$(image_ref openmpi) -N3 -n6 mpi_hello"
echo "+ $cmd    (as $MDT_USER)"
as_user "$MDT_USER" bash -c "cd $MDT_SHARED && $cmd" | sort
echo "+ the same with the helper and MPICH's own mpiexec"
out=$MDT_SHARED/demo-$$.out
as_user "$MDT_USER" bash -c "cd $MDT_SHARED && sbatch -N3 -n6 --wait -o $out --wrap 'mpiexec_docker -e UCX_TLS=self,tcp $(image_ref mpich) mpi_hello' >/dev/null"
sort "$out"
rm -f "$out"
