//! Site-ready (issue 18): the cluster runs from the Debian package, the RPM holds the same files, the
//! man pages render, and `mpiexec_docker doctor` passes on healthy nodes and names each fault provoked.

mod common;
use common::*;

const OPENMPI: &str = "localhost/md-openmpi";

const MAN_PAGES: [&str; 3] = [
    "/usr/share/man/man1/mpiexec_docker.1.gz",
    "/usr/share/man/man1/run_in_docker.1.gz",
    "/usr/share/man/man8/spank_mpiexec_docker.8.gz",
];
const CONFFILES: [&str; 2] = ["/etc/mpiexec-docker/config.yaml", "/etc/slurm/plugstack.conf.d/mpiexec-docker.conf"];

/// The running Slurm's `MAJOR.MINOR`.
fn slurm_release() -> String {
    let v = sh(As::User, "srun --version").success();
    let v = mpiexec_docker_core::slurm_version::SlurmVersion::parse(&v.stdout).expect("srun --version");
    format!("{}.{:02}", v.major(), v.minor())
}

#[test]
fn the_cluster_runs_from_the_package_built_for_its_slurm() {
    let _g = shared();
    let release = slurm_release();
    let run = sh(As::Root, "dpkg-query -W -f '${Version} ${Status}' mpiexec-docker").success();
    assert_eq!(run.stdout, format!("0.1.0+slurm{release} install ok installed"), "{run}");
    let files = sh(As::Root, "dpkg -L mpiexec-docker").success();
    for f in [HELPER, PLUGIN, "/usr/bin/run_in_docker"].iter().chain(&MAN_PAGES).chain(&CONFFILES) {
        assert!(files.lines().iter().any(|l| l == f), "{f} is not in the package: {files}");
    }
    let conffiles = sh(As::Root, "dpkg-query -W -f '${Conffiles}' mpiexec-docker").success();
    for f in CONFFILES {
        assert!(conffiles.stdout.contains(f), "{f} is a conffile: {conffiles}");
    }
    let depends = sh(As::Root, "dpkg-query -W -f '${Depends}' mpiexec-docker").success();
    assert!(depends.stdout.contains(&format!("slurm-wlm-basic-plugins (>= {release})")), "{depends}");
    // installing changes no running cluster: the plugstack line it brings is commented out
    let snippet = std::fs::read_to_string(CONFFILES[1]).unwrap();
    assert!(snippet.lines().all(|l| l.trim().is_empty() || l.starts_with('#')), "{snippet}");
    assert!(snippet.contains(&format!("#required {PLUGIN} ")), "{snippet}");
    // the cluster's Slurm loads the package's plugin and it runs the package's helper
    let plugstack = std::fs::read_to_string("/etc/slurm/plugstack.conf").unwrap();
    assert!(
        plugstack.contains(&format!("required {PLUGIN} ")) && plugstack.contains(&format!("helper={HELPER}")),
        "{plugstack}"
    );
    let run = sh(As::User, "mpiexec_docker --version").success();
    assert!(run.stdout.contains(&format!("{PLUGIN} (built for Slurm {release}.")), "{run}");
    assert!(run.stdout.contains("engines: podman "), "{run}");

    // the man pages render, with what `--help` and the plugin's tables say
    for (page, must) in MAN_PAGES.iter().zip(["--gpus", "--dry-run", "--container-image"]) {
        let run = sh(As::User, &format!("MANWIDTH=120 man -l {page} 2>&1")).success();
        assert!(run.stdout.contains(must) && run.stdout.contains("EXIT STATUS"), "{page}: {run}");
    }

    // the RPM built beside it holds the same files, the plugin where RPM-based Slurm keeps its plugins
    let rpm = sh(As::Root, "ls /var/lib/mpiexec-docker-test/packages/mpiexec-docker-*.rpm").success();
    let rpm = rpm.stdout.trim();
    let list = sh(As::Root, &format!("rpm -qlp {rpm} 2>/dev/null")).success();
    let want = [HELPER, "/usr/bin/run_in_docker", "/usr/lib64/slurm/spank_mpiexec_docker.so"];
    for f in want.iter().chain(&MAN_PAGES).chain(&CONFFILES) {
        assert!(list.lines().iter().any(|l| l == f), "{f} is not in {rpm}: {list}");
    }
    let release_tag = sh(As::Root, &format!("rpm -qp --qf '%{{RELEASE}}' {rpm} 2>/dev/null")).success();
    assert_eq!(release_tag.stdout, format!("slurm{release}"), "{release_tag}");
}

#[test]
fn doctor_passes_on_every_healthy_node() {
    let _g = shared();
    let run = sh(As::User, "srun -N3 -n3 mpiexec_docker doctor").success();
    for node in NODES {
        let lines: Vec<String> = run.lines().into_iter().filter(|l| l.starts_with(&format!("{node} "))).collect();
        for check in [
            "config",
            "engine",
            "rootless",
            "store",
            "cgroup",
            "slurm",
            "plugstack",
            "plugin",
            "helper",
            "devices",
            "cdi",
        ] {
            assert!(
                lines.iter().any(|l| l.split_whitespace().nth(1) == Some(check)),
                "{node} reports no '{check}' line: {run}"
            );
        }
        assert!(lines.iter().all(|l| l.split_whitespace().nth(2) != Some("fail")), "{run}");
    }
    // JSON for scripts
    let run = sh(As::User, &format!("mpiexec_docker doctor --json --image {OPENMPI}")).success();
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"));
    let findings = v["findings"].as_array().expect("findings");
    assert!(findings.iter().any(|f| f["check"] == "image" && f["status"] == "ok"), "{run}");
    assert!(findings.iter().all(|f| f["status"] != "fail"), "{run}");
}

/// Runs doctor as `who` with `args`; returns the lines of `check` and asserts the exit status 1.
fn doctor_fails(who: As, env: &str, args: &str, check: &str) -> Vec<String> {
    let run = sh(who, &format!("{env} mpiexec_docker doctor {args}"));
    assert_eq!(run.code, Some(1), "a failed check fails doctor: {run}");
    let lines: Vec<String> = run
        .lines()
        .into_iter()
        .filter(|l| l.split_whitespace().nth(1) == Some(check) && l.split_whitespace().nth(2) == Some("fail"))
        .collect();
    assert_eq!(lines.len(), 1, "one '{check} fail' line: {run}");
    lines
}

#[test]
fn doctor_names_each_fault_and_its_fix() {
    let _g = exclusive();
    let release = slurm_release();
    // a user without subordinate ids: rootless Podman cannot map an image's users
    {
        let _restore = Restore("/etc/subuid", std::fs::read("/etc/subuid").ok());
        let text = std::fs::read_to_string("/etc/subuid").unwrap();
        let kept: String =
            text.lines().filter(|l| !l.starts_with(&format!("{USER2}:"))).map(|l| format!("{l}\n")).collect();
        std::fs::write("/etc/subuid", kept).unwrap();
        let line = doctor_fails(As::User2, "", "", "rootless");
        assert!(line[0].contains(&format!("/etc/subuid has no range for {USER2}")), "{line:?}");
        assert!(line[0].contains(&format!("usermod --add-subuids 100000-165535 {USER2}")), "{line:?}");
    }
    // a plugin built for another Slurm than the node's (a copy of the installed one claiming another
    // release, as a package for the wrong Slurm would be)
    let other = if release == "21.08" { "22.05" } else { "21.08" };
    let mut plugin = std::fs::read(PLUGIN).unwrap();
    let marker = mpiexec_docker_core::plugin_file::MARKER;
    let at = plugin.windows(marker.len()).position(|w| w == marker).expect("the plugin's marker") + marker.len();
    plugin[at..at + 5].copy_from_slice(other.as_bytes());
    let wrong = format!("{SHARED}/doctor-wrong/spank_mpiexec_docker.so");
    std::fs::create_dir_all(format!("{SHARED}/doctor-wrong")).unwrap();
    std::fs::write(&wrong, &plugin).unwrap();
    let plugstack = shared_file("doctor-plugstack.conf", &format!("required {wrong} engine=podman helper={HELPER}\n"));
    let line = doctor_fails(As::User, "", &format!("--plugstack {plugstack}"), "plugin");
    assert!(line[0].contains(&format!("built for Slurm {other}, this node runs {release}")), "{line:?}");
    assert!(line[0].contains(&format!("install the package built for Slurm {release}")), "{line:?}");
    // a bad plugstack argument, and a helper that is not there
    let plugstack = shared_file("doctor-plugstack.conf", &format!("required {PLUGIN} engine=lxc\n"));
    let line = doctor_fails(As::User, "", &format!("--plugstack {plugstack}"), "plugstack");
    assert!(line[0].contains("engine=lxc"), "{line:?}");
    let plugstack =
        shared_file("doctor-plugstack.conf", &format!("required {PLUGIN} helper=/nonexistent/mpiexec_docker\n"));
    let line = doctor_fails(As::User, "", &format!("--plugstack {plugstack}"), "helper");
    assert!(
        line[0].contains("/nonexistent/mpiexec_docker") && line[0].contains("install the package on every node"),
        "{line:?}"
    );
    let _ = std::fs::remove_dir_all(format!("{SHARED}/doctor-wrong"));
    let _ = std::fs::remove_file(&plugstack);
    // a configuration file with a typo
    let config = shared_file("doctor-config.yaml", "enigne: podman\n");
    let line = doctor_fails(As::User, &format!("MPIEXEC_DOCKER_CONFIG={config}"), "", "config");
    assert!(line[0].contains("doctor-config.yaml") && line[0].contains("enigne"), "{line:?}");
    let _ = std::fs::remove_file(&config);
    // a CDI spec that does not parse
    {
        let _restore = Restore("/var/run/cdi/zz-doctor-broken.yaml", None);
        std::fs::write("/var/run/cdi/zz-doctor-broken.yaml", "kind: [\n").unwrap();
        let line = doctor_fails(As::User, "", "", "cdi");
        assert!(line[0].contains("CDI spec /var/run/cdi/zz-doctor-broken.yaml"), "{line:?}");
    }
    // an image no registry serves
    let line = doctor_fails(As::User, "", "--image localhost:1/nothing/here:1", "image");
    assert!(line[0].contains("localhost:1/nothing/here:1"), "{line:?}");
    // and all is well again
    sh(As::User2, "mpiexec_docker doctor").success();
}

#[test]
fn the_sites_policy_holds_and_a_refusal_names_the_rule() {
    let _g = exclusive();
    const SITE: &str = "/etc/mpiexec-docker/config.yaml";
    let _restore = Restore(SITE, std::fs::read(SITE).ok());
    let partition = sh(As::User, "sinfo -h -o %R | head -1").success().stdout.trim().to_string();
    let flavour = |opts: &str| sh(As::User, &format!("srun -N1 -n1 {opts} sh -c 'echo $MD_IMAGE_FLAVOUR'"));

    // allowed images, and one implied when a step names none
    std::fs::write(
        SITE,
        "policy:\n  allowed_images: ['localhost/md-openmpi*']\n  default_image: localhost/md-openmpi\n",
    )
    .unwrap();
    let run = flavour("");
    assert_eq!(run.success().stdout, "openmpi\n", "a step naming no image runs in the default one");
    let run = flavour("--container-image=localhost/md-mpich");
    assert!(!run.ok(), "{run}");
    let said: Vec<&str> = run.stderr.lines().filter(|l| l.contains("not allowed here")).collect();
    assert!(!said.is_empty() && said[0].contains(&format!("policy.allowed_images in {SITE}")), "{run}");
    let dir = format!("{SHARED}/policy");
    sh(As::Root, &format!("rm -rf {dir}; mkdir -p {dir}; chown {USER} {dir}")).success();
    let run = sh_in(As::User, &dir, "run_in_docker localhost/md-mpich true");
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.trim().lines().count() == 1 && run.stderr.contains("not allowed here"), "{run}");
    sh_in(As::User, &dir, "run_in_docker localhost/md-openmpi true").success();
    // a user's file cannot set a policy of its own
    std::fs::write(format!("{dir}/mine.yaml"), "policy: {allowed_images: ['*']}\n").unwrap();
    let run =
        sh_in(As::User, &dir, &format!("MPIEXEC_DOCKER_CONFIG={dir}/mine.yaml run_in_docker localhost/md-mpich true"));
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("policy is the site's setting"), "{run}");

    // every task of the partition in one image: a step asking for another is refused
    std::fs::write(SITE, format!("policy:\n  forced_images: {{{partition}: localhost/md-mpich}}\n")).unwrap();
    assert_eq!(flavour("").success().stdout, "mpich\n");
    let run = flavour("--container-image=localhost/md-openmpi");
    assert!(!run.ok(), "{run}");
    assert!(run.stderr.contains(&format!("every task of partition '{partition}' runs in localhost/md-mpich")), "{run}");
    drop(_restore);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(flavour("").success().stdout, "\n", "without the policy a step runs on the host");
    assert_no_node_drained();
    assert_clean_within(20);
}
