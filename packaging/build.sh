#!/bin/bash
# Builds the Debian package (and, with --rpm, an RPM) of mpiexec-docker for one Slurm release:
#
#   packaging/build.sh [--slurm-include DIR] [--out DIR] [--rpm]
#
# The plugin is built against the Slurm headers of DIR (default: the installed ones, libslurm-dev): Slurm
# loads a plugin only when it was built for its major.minor, so the package's version names that release
# (0.1.0+slurm22.05) and it depends on that Slurm. It holds:
#   /usr/bin/mpiexec_docker (static), /usr/bin/run_in_docker (a link to it)
#   /usr/lib/<multiarch>/slurm-wlm/spank_mpiexec_docker.so     (RPM: /usr/lib64/slurm/)
#   /usr/share/man/man1/{mpiexec_docker,run_in_docker}.1.gz, /usr/share/man/man8/spank_mpiexec_docker.8.gz
#   /etc/mpiexec-docker/config.yaml                            (conffile: the defaults, commented)
#   /etc/slurm/plugstack.conf.d/mpiexec-docker.conf            (conffile: the plugstack line, commented out:
#                                                              installing never changes a running cluster)
# Prints the paths of what it built.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
include= out=$top/target/packages rpm=0
while (($#)); do
    case $1 in
        --slurm-include) include=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --rpm) rpm=1; shift ;;
        *) echo "packaging/build.sh: unknown option $1 (--slurm-include DIR, --out DIR, --rpm)" >&2; exit 2 ;;
    esac
done
cd "$top"
export PATH=$HOME/.cargo/bin:$PATH
header=${include:-/usr/include}/slurm/slurm_version.h
number=$(awk '$1 == "#define" && $2 == "SLURM_VERSION_NUMBER" { print $3 }' "$header" 2>/dev/null || true)
[[ $number == 0x* ]] || { echo "packaging/build.sh: no SLURM_VERSION_NUMBER in $header (install libslurm-dev or give --slurm-include)" >&2; exit 2; }
major=$((number >> 16)) minor=$(((number >> 8) & 255))
slurm=$(printf '%d.%02d' "$major" "$minor")
next=$(printf '%d.%02d' "$major" $((minor + 1)))
version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
# the helper is bind-mounted into images with any libc: static (static-pie on glibc)
cargo rustc --release --quiet -p mpiexec-docker-helper --bin mpiexec_docker -- -C target-feature=+crt-static
plugin_target=$top/target/slurm-$slurm
SLURM_INCLUDE_DIR=${include:-/usr/include} cargo build --release --quiet -p mpiexec-docker-spank --target-dir "$plugin_target"

multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
stage=$(mktemp -d "$top/target/package-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# the file tree, shared by both package formats ($1: the plugin directory)
tree() {
    local root=$1 plugindir=$2
    install -d "$root/usr/bin" "$root$plugindir" "$root/usr/share/man/man1" "$root/usr/share/man/man8" \
        "$root/etc/mpiexec-docker" "$root/etc/slurm/plugstack.conf.d" "$root/usr/share/doc/mpiexec-docker"
    install -m 0755 target/release/mpiexec_docker "$root/usr/bin/mpiexec_docker"
    ln -s mpiexec_docker "$root/usr/bin/run_in_docker"
    install -m 0644 "$plugin_target/release/libspank_mpiexec_docker.so" "$root$plugindir/spank_mpiexec_docker.so"
    target/release/mpiexec_docker man --dir "$root/usr/share/man/man1"
    mv "$root/usr/share/man/man1/spank_mpiexec_docker.8" "$root/usr/share/man/man8/"
    gzip -9n "$root"/usr/share/man/man1/*.1 "$root"/usr/share/man/man8/*.8
    cat > "$root/etc/mpiexec-docker/config.yaml" <<EOT
# mpiexec-docker site configuration: every key is optional; see mpiexec_docker(1) and the README.
#engine: podman            # podman | docker
#pull: missing             # missing | newer | always | never
#env: []                   # more host variables to pass in (a trailing * is a prefix)
#mounts: []                # SRC:DST[:ro|rw], added to every container
#devices: { gpus: true, infiniband: true, cdi: auto, cdi_dirs: [/etc/cdi, /var/run/cdi] }
#relay_commands: [srun, ssh, rsh]
#cache_max_size: 50G
EOT
    cat > "$root/etc/slurm/plugstack.conf.d/mpiexec-docker.conf" <<EOT
# mpiexec-docker: srun/sbatch/salloc --container-image. Uncomment on every node and login node (with
# "include /etc/slurm/plugstack.conf.d/*.conf" in plugstack.conf), then check with: mpiexec_docker doctor
#required $plugindir/spank_mpiexec_docker.so engine=podman helper=/usr/bin/mpiexec_docker
EOT
    install -m 0644 README.md "$root/usr/share/doc/mpiexec-docker/README.md"
    printf 'mpiexec-docker\nLicense: MIT\n' > "$root/usr/share/doc/mpiexec-docker/copyright"
}

mkdir -p "$out"
deb_root=$stage/deb
tree "$deb_root" "/usr/lib/$multiarch/slurm-wlm"
install -d "$deb_root/DEBIAN"
printf '/etc/mpiexec-docker/config.yaml\n/etc/slurm/plugstack.conf.d/mpiexec-docker.conf\n' > "$deb_root/DEBIAN/conffiles"
cat > "$deb_root/DEBIAN/control" <<EOF2
Package: mpiexec-docker
Version: $version+slurm$slurm
Architecture: $arch
Maintainer: mpiexec-docker developers <mpiexec-docker@localhost>
Depends: slurm-wlm-basic-plugins (>= $slurm), slurm-wlm-basic-plugins (<< $next)
Recommends: podman (>= 4.1), uidmap, squashfs-tools-ng
Suggests: docker.io
Section: admin
Priority: optional
Installed-Size: $(du -sk "$deb_root" | cut -f1)
Description: MPI and Slurm tasks in Podman or Docker containers
 A static helper (mpiexec_docker, run_in_docker) that runs MPI jobs in container images, and a SPANK
 plugin that adds --container-image and pyxis's companion options to srun, sbatch and salloc.
 The plugin is built for Slurm $slurm.
EOF2
deb=$out/mpiexec-docker_${version}+slurm${slurm}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$deb_root" "$deb" >/dev/null
echo "$deb"

if [[ $rpm == 1 ]]; then
    command -v rpmbuild >/dev/null || { echo "packaging/build.sh: --rpm needs rpmbuild (apt install rpm)" >&2; exit 2; }
    rpm_root=$stage/rpm
    tree "$rpm_root" /usr/lib64/slurm
    cat > "$stage/mpiexec-docker.spec" <<EOF2
Name: mpiexec-docker
Version: $version
Release: slurm$slurm
Summary: MPI and Slurm tasks in Podman or Docker containers
License: MIT
Requires: slurm >= $slurm, slurm < $next
%description
A static helper (mpiexec_docker, run_in_docker) and a SPANK plugin (--container-image for srun,
sbatch and salloc), the plugin built for Slurm $slurm.
%install
cp -a $rpm_root/. %{buildroot}/
%files
/usr/bin/mpiexec_docker
/usr/bin/run_in_docker
/usr/lib64/slurm/spank_mpiexec_docker.so
/usr/share/man/man1/mpiexec_docker.1.gz
/usr/share/man/man1/run_in_docker.1.gz
/usr/share/man/man8/spank_mpiexec_docker.8.gz
%config(noreplace) /etc/mpiexec-docker/config.yaml
%config(noreplace) /etc/slurm/plugstack.conf.d/mpiexec-docker.conf
%doc /usr/share/doc/mpiexec-docker/README.md
/usr/share/doc/mpiexec-docker/copyright
EOF2
    rpmbuild --quiet -bb --define "_topdir $stage/rpmbuild" --define "_build_id_links none" \
        --define "__os_install_post %{nil}" "$stage/mpiexec-docker.spec" >&2
    cp "$stage"/rpmbuild/RPMS/*/*.rpm "$out/"
    ls "$out"/mpiexec-docker-"$version"-slurm"$slurm".*.rpm
fi
