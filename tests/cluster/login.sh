#!/usr/bin/env bash
# Runs a command on a test stack's login node, as root (srun, sbatch, squeue, sinfo there):
#   tests/cluster/login.sh [--stack debian12|debian13] -- CMD [ARGS]
# debian12 is this machine itself; debian13 runs in namespaces of its own (stack.sh).
source "$(dirname "$0")/lib.sh"
[[ $(id -u) == 0 ]] || die "run as root"
stack_args "$@"
set -- "${MDT_ARGS[@]}"
[[ ${1:-} == -- ]] && shift
[[ $# -gt 0 ]] || die "usage: tests/cluster/login.sh [--stack NAME] -- CMD [ARGS]"
if outside_stack; then
    exec_in=(stack_exec)
else
    exec_in=()
fi
"${exec_in[@]}" "$@"
