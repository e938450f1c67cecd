//! The engine's command line for one container run ([`ContainerSpec`]): where Podman's and Docker's
//! `run` differ. Pure, so every rule is unit-tested.

use std::path::Path;

use super::EngineKind;
use crate::container::{ContainerSpec, Mount, MountKind, UserMode, PROPAGATION};

/// The engine command line (without the engine binary itself) for `spec`.
pub fn run_args(engine: EngineKind, spec: &ContainerSpec) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into()];
    let mut push = |k: &str, v: String| {
        a.push(k.into());
        a.push(v);
    };
    if let Some(name) = &spec.name {
        push("--name", name.clone());
    }
    for (k, v) in &spec.labels {
        push("--label", format!("{k}={v}"));
    }
    if spec.host_namespaces {
        let own = |ns: &str| spec.unshare.iter().any(|u| u == ns);
        push("--network", if own("net") { "none" } else { "host" }.into());
        push("--ipc", if own("ipc") { "private" } else { "host" }.into());
        push("--pid", "host".into());
        // (Docker's containers have a UTS namespace of their own unless told `--uts host`)
        if own("uts") && engine == EngineKind::Podman {
            push("--uts", "private".into());
        }
    }
    match &spec.user {
        UserMode::Default => {}
        UserMode::KeepId => push("--userns", "keep-id".into()),
        UserMode::Ids { uid, gid, groups } => {
            push("--user", format!("{uid}:{gid}"));
            for g in groups {
                push("--group-add", g.to_string());
            }
        }
    }
    if spec.no_new_privileges {
        push("--security-opt", "no-new-privileges".into());
    }
    if spec.drop_capabilities {
        push("--cap-drop", "ALL".into());
    }
    if let Some(parent) = &spec.cgroup_parent {
        push("--cgroup-parent", parent.clone());
    }
    for (k, v) in &spec.ulimits {
        // an empty value is a keyword of its own (Podman's `--ulimit host`)
        push("--ulimit", if v.is_empty() { k.clone() } else { format!("{k}={v}") });
    }
    for m in &spec.mounts {
        match (m.kind, engine) {
            (MountKind::Tmpfs, _) => push("--tmpfs", tmpfs_arg(m)),
            // carried out when the spec was made (`ContainerSpec::apply_unmounts`)
            (MountKind::Umount, _) => {}
            // Docker's daemon creates a missing `--volume` source, as root: `--mount` never does
            (MountKind::Bind, EngineKind::Docker) => push("--mount", mount_arg(m)),
            (MountKind::Bind, EngineKind::Podman) => push("--volume", volume_arg(m)),
        }
    }
    for d in &spec.devices {
        push("--device", d.display().to_string());
    }
    for d in &spec.cdi_devices {
        push("--device", d.clone());
    }
    for name in &spec.env_names {
        push("--env", name.clone());
    }
    for (k, v) in &spec.env_set {
        push("--env", format!("{k}={v}"));
    }
    if let Some(w) = &spec.workdir {
        push("--workdir", w.display().to_string());
    }
    if let Some(e) = &spec.entrypoint {
        push("--entrypoint", e.clone());
    }
    if spec.preserve_fds > 0 && engine == EngineKind::Podman {
        push("--preserve-fds", spec.preserve_fds.to_string());
    }
    // an image's HEALTHCHECK would have the engine run processes in the container from outside the
    // job (the daemon's or a timer's), beyond Slurm's cgroup, accounting and cleanup
    a.push("--no-healthcheck".into());
    if spec.remove {
        a.push("--rm".into());
    }
    if spec.detach {
        a.push("--detach".into());
    }
    if spec.read_only {
        a.push("--read-only".into());
    }
    if let (Some(p), EngineKind::Podman) = (&spec.pidfile, engine) {
        a.push("--pidfile".into());
        a.push(p.display().to_string());
    }
    if spec.interactive {
        a.push("--interactive".into());
    }
    if spec.tty {
        a.push("--tty".into());
    }
    // no engine option can follow: the image and the command are positional from here on
    a.push(spec.image.clone());
    a.extend(spec.command.iter().cloned());
    a
}

/// Docker's `--mount type=bind,…`: fields with a comma or a quote are quoted (its CSV syntax). Of
/// the flags, Docker takes the propagation and `bind` (not recursive); the others were refused
/// before ([`docker_refuses`]).
fn mount_arg(m: &Mount) -> String {
    let field = |k: &str, v: &Path| {
        let f = format!("{k}={}", v.display());
        if f.contains([',', '"']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f
        }
    };
    let mut s = format!("type=bind,{},{}", field("source", &m.src), field("target", &m.dst));
    if m.readonly {
        s.push_str(",readonly");
    }
    for f in &m.flags {
        if PROPAGATION.contains(&f.as_str()) {
            s.push_str(&format!(",bind-propagation={f}"));
        } else if f == "bind" {
            s.push_str(",bind-nonrecursive=true");
        }
    }
    s
}

/// The first flag of `m` that Docker's `--mount` cannot apply, if any.
pub fn docker_refuses(m: &Mount) -> Option<&str> {
    (m.kind == MountKind::Bind)
        .then(|| m.flags.iter().find(|f| !PROPAGATION.contains(&f.as_str()) && *f != "bind" && *f != "rbind"))
        .flatten()
        .map(String::as_str)
}

fn volume_arg(m: &Mount) -> String {
    let mut s = format!("{}:{}", m.src.display(), m.dst.display());
    let opts = m.options();
    if !opts.is_empty() {
        s.push(':');
        s.push_str(&opts.join(","));
    }
    s
}

/// `--tmpfs DST[:OPTIONS]` (both engines take mount(8)'s options there).
fn tmpfs_arg(m: &Mount) -> String {
    let opts = m.options();
    if opts.is_empty() {
        m.dst.display().to_string()
    } else {
        format!("{}:{}", m.dst.display(), opts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_command_line() {
        let mut spec = ContainerSpec::new("localhost/md-openmpi", vec!["mpiexec".into(), "-n".into(), "2".into()]);
        spec.name = Some("md-1".into());
        spec.labels.push(("mpiexec-docker".into(), "1".into()));
        spec.user = UserMode::KeepId;
        spec.mount("/home/u/run", "/host", false);
        spec.workdir = Some("/host".into());
        spec.env_names.push("SLURM_JOB_ID".into());
        spec.env_set.push(("MPIEXEC_DOCKER_IMAGE".into(), "localhost/md-openmpi".into()));
        spec.devices.push("/dev/infiniband/uverbs0".into());
        spec.ulimits.push(("memlock".into(), "-1:-1".into()));
        spec.interactive = true;
        let a = run_args(EngineKind::Podman, &spec).join(" ");
        assert_eq!(
            a,
            "run --name md-1 --label mpiexec-docker=1 --network host --ipc host --pid host --userns keep-id \
             --ulimit memlock=-1:-1 --volume /home/u/run:/host --device /dev/infiniband/uverbs0 \
             --env SLURM_JOB_ID --env MPIEXEC_DOCKER_IMAGE=localhost/md-openmpi --workdir /host --no-healthcheck --rm \
             --interactive localhost/md-openmpi mpiexec -n 2"
        );
    }

    #[test]
    fn docker_user_ids_and_no_preserve_fds() {
        let mut spec = ContainerSpec::new("img", vec!["true".into()]);
        spec.user = UserMode::Ids { uid: 1500, gid: 1500, groups: vec![27] };
        spec.preserve_fds = 1;
        spec.host_namespaces = false;
        let a = run_args(EngineKind::Docker, &spec).join(" ");
        assert_eq!(a, "run --user 1500:1500 --group-add 27 --no-healthcheck --rm img true");
        spec.no_new_privileges = true;
        spec.drop_capabilities = true;
        spec.cgroup_parent = Some("/slurm_node1/uid_1500/job_7/step_0".into());
        let a = run_args(EngineKind::Docker, &spec).join(" ");
        assert_eq!(
            a,
            "run --user 1500:1500 --group-add 27 --security-opt no-new-privileges --cap-drop ALL \
             --cgroup-parent /slurm_node1/uid_1500/job_7/step_0 --no-healthcheck --rm img true"
        );
        assert!(run_args(EngineKind::Podman, &spec).join(" ").contains("--preserve-fds 1"));
    }

    #[test]
    fn pyxis_mount_flags_on_each_engine() {
        let mut spec = ContainerSpec::new("img", vec![]);
        for m in ["/d:/d:ro+rprivate+nosuid", "/e:/e:bind", "tmpfs:/scratch:size=64m+mode=1777"] {
            spec.mounts.push(Mount::parse(m).unwrap());
        }
        spec.mounts.push(Mount::parse("umount:/x").unwrap());
        let p = run_args(EngineKind::Podman, &spec).join(" ");
        assert!(
            p.contains("--volume /d:/d:ro,rprivate,nosuid --volume /e:/e:bind --tmpfs /scratch:size=64m,mode=1777"),
            "{p}"
        );
        assert!(!p.contains("/x"), "{p}");
        let d = run_args(EngineKind::Docker, &spec).join(" ");
        assert!(d.contains("--mount type=bind,source=/d,target=/d,readonly,bind-propagation=rprivate"), "{d}");
        assert!(d.contains("--mount type=bind,source=/e,target=/e,bind-nonrecursive=true"), "{d}");
        assert!(d.contains("--tmpfs /scratch:size=64m,mode=1777"), "{d}");
        assert_eq!(docker_refuses(&spec.mounts[0]), Some("nosuid"));
        assert_eq!(docker_refuses(&spec.mounts[1]), None);
    }
}
