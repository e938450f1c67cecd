#!/usr/bin/env bash
# Builds and installs mpiexec-docker: the static helper and the SPANK plugin.
#   tests/install.sh [--prefix /usr/local]
# The helper goes to PREFIX/bin/mpiexec_docker (with run_in_docker beside it), the plugin to
# PREFIX/lib/mpiexec-docker/spank_mpiexec_docker.so. Both must sit on a path every node sees.
set -euo pipefail
prefix=/usr/local
[[ ${1:-} == --prefix ]] && prefix=$2
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=$HOME/.cargo/bin:$PATH
# The helper is bind-mounted into images with any libc: link it statically (static-pie on glibc).
cargo rustc --release --quiet -p mpiexec-docker-helper --bin mpiexec_docker -- -C target-feature=+crt-static
cargo build --release --quiet -p mpiexec-docker-spank
install -d "$prefix/bin" "$prefix/lib/mpiexec-docker"
install -m 0755 target/release/mpiexec_docker "$prefix/bin/mpiexec_docker.new"
mv -f "$prefix/bin/mpiexec_docker.new" "$prefix/bin/mpiexec_docker"
ln -sfn mpiexec_docker "$prefix/bin/run_in_docker"
install -m 0755 target/release/libspank_mpiexec_docker.so "$prefix/lib/mpiexec-docker/spank_mpiexec_docker.so.new"
mv -f "$prefix/lib/mpiexec-docker/spank_mpiexec_docker.so.new" "$prefix/lib/mpiexec-docker/spank_mpiexec_docker.so"
echo "installed $prefix/bin/mpiexec_docker and $prefix/lib/mpiexec-docker/spank_mpiexec_docker.so"
