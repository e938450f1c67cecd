#!/usr/bin/env bash
# Builds and installs mpiexec-docker: the static helper and the SPANK plugin.
#   tests/install.sh [--prefix /usr/local] [--destdir DIR] [--slurm-include DIR]
# The helper goes to PREFIX/bin/mpiexec_docker (with run_in_docker beside it), the plugin to
# PREFIX/lib/mpiexec-docker/spank_mpiexec_docker.so. Both must sit on a path every node sees.
# --destdir installs under DIR (a root file system), --slurm-include builds the plugin against the
# Slurm headers in DIR (DIR/slurm/spank.h) instead of the installed ones: Slurm loads a plugin only
# when it was built for the running Slurm's major.minor. Each Slurm release gets its own target
# directory (target/slurm-MAJOR.MINOR).
set -euo pipefail
prefix=/usr/local destdir= include=
while (($#)); do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --slurm-include) include=$2; shift 2 ;;
        *) echo "tests/install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=$HOME/.cargo/bin:$PATH
# The helper is bind-mounted into images with any libc: link it statically (static-pie on glibc).
cargo rustc --release --quiet -p mpiexec-docker-helper --bin mpiexec_docker -- -C target-feature=+crt-static
plugin_target=$top/target
if [[ -n $include ]]; then
    number=$(awk '$1 == "#define" && $2 == "SLURM_VERSION_NUMBER" { print $3 }' "$include/slurm/slurm_version.h")
    version=
    [[ $number == 0x* ]] && version=$(printf '%d.%02d' $((number >> 16)) $(((number >> 8) & 255)))
    [[ -n $version ]] || { echo "tests/install.sh: no SLURM_VERSION_NUMBER in $include/slurm/slurm_version.h" >&2; exit 2; }
    plugin_target=$top/target/slurm-$version
    SLURM_INCLUDE_DIR=$include cargo build --release --quiet -p mpiexec-docker-spank --target-dir "$plugin_target"
else
    cargo build --release --quiet -p mpiexec-docker-spank
fi
bin=$destdir$prefix/bin lib=$destdir$prefix/lib/mpiexec-docker
install -d "$bin" "$lib"
install -m 0755 target/release/mpiexec_docker "$bin/mpiexec_docker.new"
mv -f "$bin/mpiexec_docker.new" "$bin/mpiexec_docker"
ln -sfn mpiexec_docker "$bin/run_in_docker"
install -m 0755 "$plugin_target/release/libspank_mpiexec_docker.so" "$lib/spank_mpiexec_docker.so.new"
mv -f "$lib/spank_mpiexec_docker.so.new" "$lib/spank_mpiexec_docker.so"
echo "installed $bin/mpiexec_docker and $lib/spank_mpiexec_docker.so"
