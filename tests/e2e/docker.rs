//! Docker as the engine (issue 7), against one real dockerd per node: the plugin (plugstack
//! `engine=docker`, set for this test binary) and the helper (`--engine docker`). Docker's daemon is
//! root and its socket is root's alone, so the security tests run as the non-root test user: every
//! way to more privilege is refused or has no effect, and the job's processes on the host are the
//! user's.

mod common;
use common::*;

const OPENMPI: &str = "localhost/md-openmpi";

fn docker() -> std::sync::RwLockReadGuard<'static, ()> {
    use_docker();
    shared()
}

fn docker_alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    use_docker();
    exclusive()
}

#[test]
fn plugin_tasks_run_in_docker_as_the_user_with_no_privilege() {
    let _g = docker();
    let run = sh(
        As::User,
        &format!(
            "srun --container-image={OPENMPI} -N3 -n3 sh -c 'echo $(hostname) $(id -u):$(id -g) $(pwd) \
             $MD_IMAGE_FLAVOUR $(grep -E \"^(CapEff|CapBnd|NoNewPrivs|Seccomp):\" /proc/self/status | tr -s \"\\t\\n\" \"  \")'"
        ),
    )
    .success();
    let mut lines = run.lines();
    lines.sort();
    // the container's own confinement (no capabilities at all, no_new_privs, Docker's seccomp filter)
    let want: Vec<String> = NODES
        .iter()
        .map(|n| {
            format!(
                "{n} 1500:1500 {SHARED} openmpi CapEff: 0000000000000000 CapBnd: 0000000000000000 \
                 NoNewPrivs: 1 Seccomp: 2"
            )
        })
        .collect();
    assert_eq!(lines, want, "{run}");
    // as root, root inside
    let run = sh(As::Root, &format!("srun --container-image={OPENMPI} -N1 id -u")).success();
    assert_eq!(run.lines(), ["0"], "{run}");
}

#[test]
fn gpus_come_through_the_nodes_cdi_spec_with_docker() {
    let _g = docker();
    // the plugin, for a user: exactly the step's GPUs with their variables, the driver's library and
    // variable (a Docker with CDI applies the spec; one without gets the same edits from us)
    let probe = shell_quote(GPU_PROBE);
    let run =
        sh(As::User, &format!("srun -w node1 -n1 --gres=gpu:2 --container-image={OPENMPI} sh -c {probe}")).success();
    let views = gpu_views(&run.stdout);
    assert_eq!(views.len(), 1, "{run}");
    assert_eq!(views[0].step_gpus.len(), 2, "{run}");
    assert_eq!(views[0], GpuView::through_cdi(&views[0].step_gpus, &views[0].step_gpus), "{run}");
    let run = sh(As::User, &format!("srun -w node1 -n1 --container-image={OPENMPI} sh -c {probe}")).success();
    assert_eq!(gpu_views(&run.stdout), [GpuView::through_cdi(&[], &[])], "no GPU, none of it: {run}");
    // the helper (Docker is root's): the GPUs asked for
    let run = sh(As::Root, &format!("run_in_docker --engine docker --gpus 1,2 {OPENMPI} sh -c {probe}")).success();
    assert_eq!(gpu_views(&run.stdout), [GpuView::through_cdi(&[], &[1, 2])], "{run}");
}

#[test]
fn plugin_mpi_across_nodes_and_srun_mpiexec_in_a_batch_container() {
    let _g = docker();
    let run = sh(As::User, &format!("srun --mpi=pmix --container-image={OPENMPI} -N3 -n6 mpi_hello")).success();
    let hellos = run.lines().into_iter().filter(|l| l.starts_with("Hello from rank")).count();
    assert_eq!(hellos, 6, "{run}");
    for node in NODES {
        assert!(run.stdout.contains(&format!(" on {node} ")), "no rank on {node}: {run}");
    }
    let run = sbatch(
        As::User,
        &format!("-N3 --container-image={OPENMPI}"),
        "echo batch $MD_IMAGE_FLAVOUR $(id -u)\nsrun -N3 -n3 sh -c 'echo step $(hostname) $MD_IMAGE_FLAVOUR $(pwd)'\n\
         mpiexec -n 3 mpi_hello",
    )
    .success();
    assert!(run.stdout.contains("batch openmpi 1500"), "{run}");
    for node in NODES {
        assert!(run.stdout.contains(&format!("step {node} openmpi {SHARED}")), "{run}");
        assert!(run.stdout.contains(&format!("of 3 on {node} ")), "{run}");
    }
    assert!(!run.stdout.contains("error"), "{run}");
}

#[test]
fn plugin_exit_codes_and_memory_limit_are_slurms() {
    let _g = docker();
    let run = sh(As::User, &format!("srun --container-image={OPENMPI} -N1 sh -c 'exit 3'"));
    assert_eq!(run.code, Some(3), "{run}");
    // the same program over the step's memory limit, bare and in the container: both killed by
    // the step's cgroup, and Slurm says so
    let hog = "perl -e '$x = \"a\" x (400 * 1024 * 1024); print \"survived\\n\"'";
    for image in ["", &format!("--container-image={OPENMPI}")] {
        let run = sh(As::User, &format!("srun -N1 --mem=100M {image} {hog}"));
        assert_ne!(run.code, Some(0), "{run}");
        assert!(!run.stdout.contains("survived"), "{run}");
        assert!(run.stderr.contains("Out Of Memory"), "{run}");
    }
}

#[test]
fn plugin_processes_belong_to_the_user_and_nothing_survives_scancel() {
    let _g = docker_alone();
    let job = sh(
        As::User,
        &format!("sbatch --parsable -N3 -o /dev/null --wrap 'srun --container-image={OPENMPI} -N3 sleep 300'"),
    )
    .success();
    let job = job.stdout.trim().to_string();
    // every node: the container's process and the task, the user's on the host, in the step's cgroup
    let running = wait_for(60, || {
        sh(As::Root, "ps -eo user=,args= | grep -cE '^mpitest +(/usr/bin/)?sleep 300'").stdout.trim() == "3"
    });
    let owners = sh(As::Root, "ps -eo user=,args= | grep -E 'sleep 300|in-container pause' | grep -v grep").success();
    assert!(running, "{owners}");
    for line in owners.lines() {
        assert!(line.starts_with("mpitest "), "a process of the job is not the user's: {owners}");
    }
    let pause = sh(As::Root, "pgrep -f 'in-container pause' | head -1").success();
    let cgroup = sh(As::Root, &format!("grep memory: /proc/{}/cgroup", pause.stdout.trim())).success();
    assert!(
        cgroup.stdout.contains(&format!("/job_{job}/step_0")),
        "the container is not in the step's cgroup: {cgroup}"
    );
    sh(As::Root, &format!("scancel {job}")).success();
    assert_clean_within(60);
    assert_no_node_drained();
}

#[test]
fn escalation_attempts_are_refused_and_leave_nothing() {
    let _g = docker_alone();
    let refused = [
        (format!("--container-image={OPENMPI} --container-mounts=/root:/r"), "you may not read /root"),
        (format!("--container-image={OPENMPI} --container-mounts=/etc/shadow:/s"), "you may not read /etc/shadow"),
        (format!("--container-image={OPENMPI} --container-mounts=/tmp:/x:rw+privileged"), "unknown flag 'privileged'"),
        (format!("--container-image={OPENMPI} --container-mounts=/tmp:/x:rw,privileged"), "mount 'privileged'"),
        (format!("--container-image={OPENMPI} --container-mounts=/tmp:/x:z"), "unknown flag 'z'"),
        ("--container-image=--privileged".to_string(), "--privileged"),
        (format!("'--container-image={OPENMPI} --privileged'"), "not a valid image"),
    ];
    for (opts, why) in refused {
        let run = sh(As::User, &format!("srun -N1 {opts} id -u"));
        assert_ne!(run.code, Some(0), "{run}");
        assert!(run.stderr.contains(why), "expected '{why}': {run}");
        assert!(!run.stdout.contains('0'), "{run}");
    }
    // a setuid-root program the user brought in an image file: setuid has no effect
    let image = format!("{SHARED}/images/md-suid.tar");
    let run =
        sh(As::User, &format!("srun -N1 --container-image={image} sh -c 'stat -c %a:%u /bin/euid; euid'")).success();
    assert_eq!(run.lines(), ["4755:0", "euid=1500"], "{run}");
    // --container-remap-root: root inside, the user on the host
    let file = format!("{SHARED}/remap-root-{}", std::process::id());
    let run = sh(
        As::User,
        &format!(
            "srun -N1 --container-remap-root --container-image={OPENMPI} sh -c 'id -u; touch {file}; cat /etc/shadow'"
        ),
    );
    assert_eq!(run.lines().first().map(String::as_str), Some("0"), "{run}");
    assert!(run.stderr.contains("Permission denied"), "root inside must not read root's files: {run}");
    let owner = sh(As::Root, &format!("stat -c %u {file}; rm -f {file}")).success();
    assert_eq!(owner.lines(), ["1500"], "{owner}");
    // the helper: Docker's socket is root's
    let run = sh(As::User, &format!("mpiexec_docker --engine docker {OPENMPI} true"));
    assert_eq!(run.code, Some(125), "{run}");
    assert!(run.stderr.contains("you may not use this node's Docker daemon"), "{run}");
    assert_eq!(run.stderr.lines().count(), 1, "{run}");
    assert_no_node_drained();
    assert_clean_within(30);
}

#[test]
fn image_files_are_loaded_once_per_node_under_our_name_only() {
    let _g = docker_alone();
    let image = format!("{SHARED}/images/md-tiny.tar");
    let prune = "docker images --format '{{.Repository}}:{{.Tag}}' | grep -E 'md-tiny|mpiexec-docker-cache/md-tiny' \
                 | xargs -r docker rmi >/dev/null; true";
    for node in NODES {
        on_node(node, As::Root, prune).success();
    }
    let run = sh(As::User, &format!("srun -N3 -n6 --container-image={image} sh -c 'echo $MD_IMAGE_FLAVOUR'")).success();
    assert_eq!(run.lines(), ["tiny"; 6], "{run}");
    for node in NODES {
        let names =
            on_node(node, As::Root, "docker images --format '{{.Repository}}:{{.Tag}}' | grep md-tiny").success();
        assert_eq!(names.lines().len(), 1, "{node}: {names}");
        // the user's own name: in the node's shared store, one user's load never stands for another's
        assert!(names.stdout.starts_with("localhost/mpiexec-docker-cache/u1500/md-tiny:"), "{node}: {names}");
        on_node(node, As::Root, prune).success();
    }
}

#[test]
fn helper_with_docker_runs_mpi_on_one_node_and_across_nodes() {
    let _g = docker();
    let run = sh(As::Root, &format!("mpiexec_docker --engine docker {OPENMPI} -n 2 mpi_hello")).success();
    assert_eq!(run.lines().iter().filter(|l| l.starts_with("Hello from rank")).count(), 2, "{run}");
    let run = sh(As::Root, &format!("mpiexec_docker --engine docker {OPENMPI} sh -c 'exit 7'"));
    assert_eq!(run.code, Some(7), "{run}");
    let run = sbatch(As::Root, "-N3", &format!("mpiexec_docker --engine docker {OPENMPI} -n 3 mpi_hello")).success();
    for node in NODES {
        assert!(run.stdout.contains(&format!("of 3 on {node} ")), "{run}");
    }
}

#[test]
fn an_images_volume_goes_with_its_step() {
    let _g = docker_alone();
    let image = format!("{SHARED}/images/md-volume.tar");
    let run = sh(As::User, &format!("srun -N3 --container-image={image} sh -c 'test -d /data && echo volume'"));
    assert_eq!(run.success().lines(), ["volume", "volume", "volume"]);
    assert_clean_within(30);
}

#[test]
fn a_pid_written_by_the_user_is_never_acted_on_as_root() {
    let _g = docker_alone();
    // the job's user writes slurmd's pid into every run directory of theirs on the node while Docker
    // steps start and end there: root takes the container's pid from the engine alone, and moves or
    // kills only the user's own placeholder
    let slurmd = node_pid("node1");
    let cgroup_before = sh(As::Root, &format!("cat /proc/{slurmd}/cgroup")).success().stdout;
    let script = format!(
        "(while true; do for d in /run/mpiexec-docker/1500/run-*/ /run/mpiexec-docker/0/run-*/; do \
           [ -d \"$d\" ] && echo {slurmd} > \"$d/container.pid\"; done; done) 2>/dev/null &\n\
         for i in 1 2 3; do srun --container-image={OPENMPI} -n1 true && echo step ok; done\n\
         kill %1"
    );
    let run = sbatch(As::User, "-N1 -n1 -w node1", &script);
    // (srun's own notes, "Step created for …" on 24.11, are not the steps' output)
    let lines: Vec<String> = run.lines().into_iter().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(lines, ["step ok", "step ok", "step ok"], "{run}");
    assert_eq!(node_pid("node1"), slurmd, "slurmd lives on");
    let cgroup_after = sh(As::Root, &format!("cat /proc/{slurmd}/cgroup")).success().stdout;
    assert_eq!(cgroup_before, cgroup_after, "slurmd was not moved into a step's cgroup");
    assert_clean_within(30);
    assert_no_node_drained();
}

#[test]
fn a_fifo_named_as_the_image_fails_at_once_and_stalls_no_other_user() {
    let _g = docker();
    // with Docker, root fetches images for every user of the node: a FIFO must not hold it
    let fifo = format!("/home/{USER}/fifo-image.tar");
    sh(As::User, &format!("rm -f {fifo}; mkfifo {fifo}")).success();
    let t0 = std::time::Instant::now();
    let other = std::thread::spawn(|| sh(As::User2, &format!("srun -w node2 -n1 --container-image={OPENMPI} id -u")));
    let run = sh(As::User, &format!("timeout 60 srun -w node2 -n1 --container-image={fifo} true"));
    let took = t0.elapsed();
    let other = other.join().unwrap();
    sh(As::User, &format!("rm -f {fifo}")).success();
    assert!(!run.ok() && run.stderr.contains("not a regular file"), "{run}");
    assert!(took < std::time::Duration::from_secs(30), "the step failed after {took:?}: {run}");
    assert_eq!(other.success().lines(), ["1501"]);
    assert_no_node_drained();
}

#[test]
fn an_archive_that_would_rename_another_users_image_is_refused() {
    let _g = docker();
    // a second user makes image files from md-tiny whose index also names localhost/md-openmpi:latest
    // (a second entry, or a second manifest.json): loading either into the node's shared Docker store
    // would make the first user's --container-image=localhost/md-openmpi run the attacker's files
    let make = |variant: &str| {
        let path = format!("{SHARED}/evil-{variant}-{}.tar", std::process::id());
        let script = format!(
            r#"import json, tarfile, io
src = tarfile.open("{SHARED}/images/md-tiny.tar")
dst = tarfile.open("{path}", "w")
for m in src.getmembers():
    data = src.extractfile(m).read() if m.isfile() else None
    if m.name == "manifest.json":
        entries = json.loads(data)
        evil = dict(entries[0], RepoTags=["localhost/md-openmpi:latest"])
        if "{variant}" == "entries":
            data = json.dumps(entries + [evil]).encode()
        else:
            extra = tarfile.TarInfo("./manifest.json"); body = json.dumps([evil]).encode(); extra.size = len(body)
            m.size = len(data); dst.addfile(m, io.BytesIO(data)); dst.addfile(extra, io.BytesIO(body)); continue
        m.size = len(data)
    dst.addfile(m, io.BytesIO(data) if data is not None else None)
dst.close()"#
        );
        sh(As::User2, &format!("python3 -c {}", shell_quote(&script))).success();
        path
    };
    let image_id =
        || on_node("node2", As::Root, "docker image inspect -f '{{.Id}}' localhost/md-openmpi").success().stdout;
    let before = image_id();
    for (variant, why) in [("entries", "names 2 images"), ("twice", "manifest.json twice")] {
        let evil = make(variant);
        let run = sh(As::User2, &format!("srun -w node2 -n1 --container-image={evil} true"));
        let _ = std::fs::remove_file(&evil);
        assert!(!run.ok() && run.stderr.contains(why), "{run}");
    }
    assert_eq!(image_id(), before, "localhost/md-openmpi is still the same image");
    let run = sh(As::User, &format!("srun -w node2 -n1 --container-image={OPENMPI} printenv MD_IMAGE_FLAVOUR"));
    assert_eq!(run.success().lines(), ["openmpi"]);
    assert_no_node_drained();
}

#[test]
fn a_forged_archive_is_never_served_for_the_real_file() {
    let _g = docker_alone();
    // the second user rewrites md-tiny's config (the image's environment) under its old name, in a
    // file of the same name: the old cache key (file stem + the config name the archive claims)
    // would have matched the real md-tiny.tar's
    let dir = format!("/home/{USER2}/forged");
    let evil = format!("{dir}/md-tiny.tar");
    let script = format!(
        r#"import os, tarfile, io
os.makedirs("{dir}", exist_ok=True)
src = tarfile.open("{SHARED}/images/md-tiny.tar")
dst = tarfile.open("{evil}", "w")
for m in src.getmembers():
    data = src.extractfile(m).read() if m.isfile() else None
    if m.name.endswith(".json") and len(m.name) == 69:
        data = data.replace(b"MD_IMAGE_FLAVOUR=tiny", b"MD_IMAGE_FLAVOUR=evil")
        m.size = len(data)
    dst.addfile(m, io.BytesIO(data) if data is not None else None)
dst.close()"#
    );
    sh(As::User2, &format!("python3 -c {}", shell_quote(&script))).success();
    let flavour = "sh -c 'echo $MD_IMAGE_FLAVOUR'";
    let run = sh(As::User2, &format!("srun -w node3 -n1 --container-image={evil} {flavour}"));
    assert!(!run.ok() && run.stderr.contains("refused"), "{run}");
    let real = format!("{SHARED}/images/md-tiny.tar");
    let run = sh(As::User, &format!("srun -w node3 -n1 --container-image={real} {flavour}"));
    assert_eq!(run.success().lines(), ["tiny"]);
    // nor can the second user name the first user's entries, or any image by its id
    let names = on_node("node3", As::Root, "docker images --format '{{.Repository}}:{{.Tag}}' | grep u1500/md-tiny");
    let theirs = names.success().lines()[0].clone();
    let id = on_node("node3", As::Root, &format!("docker image inspect -f '{{{{.Id}}}}' {theirs}")).success();
    let id = id.stdout.trim().to_string();
    for name in [theirs.as_str(), id.as_str(), &id[7..19]] {
        let run = sh(As::User2, &format!("srun -w node3 -n1 --container-image={name} true"));
        assert!(!run.ok() && run.stderr.contains("not accepted") || run.stderr.contains("tool's own"), "{run}");
    }
    sh(As::User2, &format!("rm -rf {dir}")).success();
    assert_no_node_drained();
}

#[test]
fn a_swapped_mount_source_never_reaches_another_users_files() {
    let _g = docker();
    // the first user's private file; the second user swaps a directory of theirs for a link to it
    // while their steps start (an image check lies between the user's check and Docker's bind)
    sh(As::User, "mkdir -p ~/private && chmod 700 ~/private && echo secret-of-user-1 > ~/private/secret").success();
    let home2 = format!("/home/{USER2}");
    let script = format!(
        "mkdir -p {home2}/swap/real && echo own-file > {home2}/swap/real/secret\n\
         (while true; do ln -sfn /home/{USER}/private {home2}/swap/d; rm -f {home2}/swap/d; \
           ln -sfn {home2}/swap/real {home2}/swap/d; done) 2>/dev/null &\n\
         for i in $(seq 8); do srun -n1 --container-image={OPENMPI} --container-mounts={home2}/swap/d:/x \
           cat /x/secret 2>&1; done\n\
         kill %1; wait\n\
         ln -sfn {home2}/swap/real {home2}/swap/d\n\
         srun -n1 --container-image={OPENMPI} --container-mounts={home2}/swap/d:/x cat /x/secret"
    );
    let run = sbatch(As::User2, "-N1 -n1 -w node2", &script);
    // whatever each racing step saw (a link to the other user's directory, none, their own), the other
    // user's file never reached a container; once the link stays, it is the user's own directory
    assert!(!run.stdout.contains("secret-of-user-1") && !run.stderr.contains("secret-of-user-1"), "{run}");
    assert_eq!(run.lines().last().map(String::as_str), Some("own-file"), "{run}");
    // a path through /proc names the engine's own view: refused with one line
    let run = sh(
        As::User2,
        &format!("srun -w node2 -n1 --container-image={OPENMPI} --container-mounts=/proc/self/cwd:/x true"),
    );
    assert!(!run.ok() && run.stderr.contains("/proc"), "{run}");
    // nor does a working directory the job's environment names (slurmstepd takes PWD from it)
    for pwd in [format!("/home/{USER}/private"), "/proc/self/cwd".to_string()] {
        let run = sh(
            As::User2,
            &format!(
                "env PWD={pwd} srun -w node2 -n1 --container-image={OPENMPI} sh -c 'cat secret; cat private/secret'"
            ),
        );
        assert!(!run.ok() && !run.stdout.contains("secret-of-user-1"), "{run}");
    }
    sh(As::User2, &format!("rm -rf {home2}/swap")).success();
    sh(As::User, "rm -rf ~/private").success();
    // nothing staged stays mounted on the node
    let mounts =
        on_node("node2", As::Root, "grep -c '/run/mpiexec-docker/.*/mnt/' /proc/self/mountinfo || true").success();
    assert_eq!(mounts.stdout.trim(), "0", "{mounts}");
    assert_clean_within(30);
    assert_no_node_drained();
}

#[test]
fn names_squatted_in_tmp_stall_nobody() {
    let _g = docker();
    // the second user makes the names the first user's tool once used in /tmp, on every node: a
    // directory open to all, a FIFO as the lock, links
    for node in NODES {
        on_node(
            node,
            As::User2,
            "mkdir -p -m 777 /tmp/mpiexec-docker-1500 2>/dev/null; mkfifo /tmp/mpiexec-docker-1500.lock 2>/dev/null; \
             ln -sfn /etc /tmp/mpiexec-docker-0 2>/dev/null; mkfifo /tmp/mpiexec-docker-0.lock 2>/dev/null; true",
        );
    }
    let run = sh(As::User, &format!("timeout 120 srun -N3 -n3 --container-image={OPENMPI} id -u"));
    for node in NODES {
        on_node(node, As::User2, "rm -rf /tmp/mpiexec-docker-1500 /tmp/mpiexec-docker-1500.lock /tmp/mpiexec-docker-0 /tmp/mpiexec-docker-0.lock");
    }
    assert_eq!(run.success().lines(), ["1500"; 3]);
    assert_no_node_drained();
}

#[test]
fn registry_images_are_each_users_own_pull() {
    let _g = docker_alone();
    // what root pulls for one user (with that user's logins) stays that user's: another user's step
    // pulls it again with theirs, never runs it on the first user's word
    let image = "10.77.0.1:5000/md/tiny";
    let forget = "docker images --format '{{.Repository}}:{{.Tag}}' | grep -E 'md/tiny|md-tiny-latest' \
                  | xargs -r docker rmi >/dev/null 2>&1; true";
    on_node("node1", As::Root, forget);
    let flavour = "sh -c 'echo $MD_IMAGE_FLAVOUR'";
    let run = sh(As::User2, &format!("srun -w node1 -n1 --container-image={image} {flavour}"));
    assert_eq!(run.success().lines(), ["tiny"]);
    let names = || {
        let out = on_node(
            "node1",
            As::Root,
            "docker images --format '{{.Repository}}:{{.Tag}}' | grep -E 'md/tiny|md-tiny-latest' | sort",
        );
        out.success().lines()
    };
    assert_eq!(names(), ["localhost/mpiexec-docker-cache/u1501/10.77.0.1-5000-md-tiny-latest:pulled"]);
    let run = sh(As::User, &format!("srun -w node1 -n1 --container-image={image} {flavour}"));
    assert_eq!(run.success().lines(), ["tiny"]);
    assert_eq!(
        names(),
        [
            "localhost/mpiexec-docker-cache/u1500/10.77.0.1-5000-md-tiny-latest:pulled",
            "localhost/mpiexec-docker-cache/u1501/10.77.0.1-5000-md-tiny-latest:pulled"
        ]
    );
    on_node("node1", As::Root, forget);
    assert_no_node_drained();
}

#[test]
fn with_a_job_fetch_dir_root_hands_the_users_pull_on_to_the_jobs_other_nodes() {
    let _g = docker_alone();
    let (site, dir) = with_job_fetch_dir();
    let image = format!("{REGISTRY}/md/tiny");
    let ours = "docker images --format '{{.Repository}}:{{.Tag}}' | grep -E 'md/tiny|md-tiny-latest' | sort";
    let forget = format!("{ours} | xargs -r docker rmi >/dev/null 2>&1; true");
    for node in NODES {
        on_node(node, As::Root, &forget);
    }
    // a cold step over the 3 nodes: root pulls for the user on one node, the others load what it
    // handed on through the user's job directory
    cold_step_fetches_each_blob_once(As::User, 6);
    // every node's daemon has it under the user's own name only: not the registry's name, which
    // another user's step would run
    for node in NODES {
        let names = on_node(node, As::Root, ours).success().lines();
        assert_eq!(names, ["localhost/mpiexec-docker-cache/u1500/10.77.0.1-5000-md-tiny-latest:pulled"], "{node}");
    }
    // another user's job on the same nodes pulls with their own logins, not from the first user's
    let from = log_lines();
    let run = sh(As::User2, &format!("srun -N3 -n3 --container-image={image} sh -c 'echo $MD_IMAGE_FLAVOUR'"));
    assert_eq!(run.success().lines(), ["tiny", "tiny", "tiny"]);
    // (the layers are in the daemon already: its pull asks for the manifest alone)
    let log = std::fs::read_to_string(REGISTRY_LOG).unwrap_or_default();
    let asked = log.lines().skip(from).filter(|l| l.contains(" /v2/md/tiny/manifests/")).count();
    assert!(asked >= 1, "the second user's job asked the registry");
    // the admin takes the setting out as that job ends: the jobs' ends still remove what the nodes
    // handed each other (root's helper noted where)
    drop(site);
    assert_clean_within(60);
    assert!(wait_for(30, || job_fetch_left(&dir).trim().is_empty()), "left: {}", job_fetch_left(&dir));
    for node in NODES {
        on_node(node, As::Root, &forget);
    }
    assert_no_node_drained();
}

#[test]
fn the_relay_server_root_starts_for_a_user_inherits_nothing() {
    let _g = docker();
    // while a Docker step runs, its relay server (started by root's helper, running as the user) holds
    // its standard streams (/dev/null), its run directory's lock, its socket and the container's
    // pidfd only, with umask 022 and / as its directory
    let script = "srun -n1 --container-image=localhost/md-openmpi sleep 5 & sleep 3; \
                  for p in $(pgrep -u mpitest -f 'step-container serve'); do \
                    echo $(grep Umask /proc/$p/status) cwd=$(readlink /proc/$p/cwd); \
                    for f in /proc/$p/fd/*; do echo fd $(readlink $f); done; done; wait";
    let run = sbatch(As::User, "-N1 -n1 -w node3", script);
    let lines = run.lines();
    assert_eq!(lines.iter().filter(|l| l.starts_with("Umask")).collect::<Vec<_>>(), ["Umask: 0022 cwd=/"], "{run}");
    let fds: Vec<&String> = lines.iter().filter(|l| l.starts_with("fd ")).collect();
    assert_eq!(fds.iter().filter(|l| l.as_str() == "fd /dev/null").count(), 3, "{run}");
    let expected = |l: &str| {
        l == "fd /dev/null"
            || (l.starts_with("fd /run/mpiexec-docker/0/run-") && l.ends_with("/owner.lock"))
            || l.starts_with("fd socket:")
            || l == "fd anon_inode:[pidfd]"
    };
    assert!(fds.iter().all(|l| expected(l)) && fds.len() == 6, "only what it was given: {run}");
    assert_clean_within(30);
}

#[test]
fn pyxis_mount_syntax_with_docker() {
    let _g = docker();
    let dir = format!("{SHARED}/pyx-docker-mounts");
    sh(
        As::Root,
        &format!("rm -rf {dir}; mkdir -p {dir}/data; echo from-host > {dir}/data/file; chown -R {USER} {dir}"),
    )
    .success();
    let script = "cat /d/file; touch /d/x 2>/dev/null && echo d-writable || echo d-read-only; \
                  grep ' /scratch ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1; \
                  grep -c ' /tmp ' /proc/self/mountinfo; true";
    let run = sh_in(
        As::User,
        &dir,
        &format!(
            "srun -N1 -n1 --container-image={OPENMPI} --container-mounts=./data:/d:ro+rslave,tmpfs:/scratch:size=8m,umount:/tmp \
             sh -c {}",
            shell_quote(script)
        ),
    );
    assert_eq!(run.success().lines(), ["from-host", "d-read-only", "tmpfs", "0"]);
    // what Docker's --mount cannot apply is refused with one line, not dropped
    let run = sh_in(
        As::User,
        &dir,
        &format!("srun -N1 -n1 --container-image={OPENMPI} --container-mounts=./data:/d:nosuid true"),
    );
    assert!(!run.ok(), "{run}");
    assert!(run.stderr.contains("Docker cannot apply the flag 'nosuid'"), "{run}");
    sh(As::Root, &format!("rm -rf {dir}")).success();
    assert_no_node_drained();
    assert_clean_within(30);
}

#[test]
fn squashfs_images_with_docker_are_the_users_own_import() {
    let _g = docker();
    let dir = format!("{SHARED}/pyx-docker-sqsh");
    sh(As::Root, &format!("rm -rf {dir}; mkdir -p {dir}; chown {USER} {dir}")).success();
    let forget = "docker images --format '{{.Repository}}:{{.Tag}}' | grep 'mpiexec-docker-cache/u1500/tiny:' \
                  | xargs -r docker rmi >/dev/null; true";
    on_node("node2", As::Root, forget).success();
    // busybox's root file system as a squashfs file, as enroot makes them
    sh_in(
        As::User,
        &dir,
        "mkdir -p rootfs/bin rootfs/etc && cp /bin/busybox rootfs/bin/ && ln -s busybox rootfs/bin/sh && \
         echo MD_SQSH_VAR=docker-sqsh > rootfs/etc/environment && \
         mksquashfs rootfs tiny.sqsh -quiet -no-progress -noappend -all-root >/dev/null && rm -rf rootfs",
    )
    .success();
    let run = sh_in(
        As::User,
        &dir,
        "srun -N1 -n1 -w node2 --container-image=./tiny.sqsh sh -c 'echo $MD_SQSH_VAR $(/bin/busybox id -u)'",
    );
    assert_eq!(run.success().lines(), ["docker-sqsh 1500"]);
    // imported under the user's own name in Docker's shared store
    let names = on_node(
        "node2",
        As::Root,
        "docker images --format '{{.Repository}}' | grep -c 'mpiexec-docker-cache/u1500/tiny' || true",
    );
    assert_eq!(names.success().stdout.trim(), "1");
    on_node("node2", As::Root, forget).success();
    sh(As::Root, &format!("rm -rf {dir}")).success();
    assert_no_node_drained();
}

#[test]
fn container_save_with_docker_writes_the_users_file() {
    let _g = docker();
    let dir = format!("{SHARED}/pyx-docker-save");
    sh(As::Root, &format!("rm -rf {dir}; mkdir -p {dir}; chown {USER} {dir}")).success();
    let run = sh_in(
        As::User,
        &dir,
        &format!(
            "srun -N1 -n1 -w node1 --container-image={OPENMPI} --container-save=mdt-dsaved.tar \
             sh -c 'echo kept > /var/tmp/saved-marker'"
        ),
    );
    run.success();
    // written through the user's own descriptor: theirs, and complete
    let listing = sh_in(As::User, &dir, "stat -c '%U %n' * .[!.]* 2>/dev/null; true").success();
    assert_eq!(listing.lines(), [format!("{USER} mdt-dsaved.tar")], "{listing}");
    let run =
        sh_in(As::User, &dir, "srun -N1 -n1 -w node2 --container-image=./mdt-dsaved.tar cat /var/tmp/saved-marker");
    assert_eq!(run.success().lines(), ["kept"]);
    // nothing committed on the way stays in the shared store
    for node in ["node1", "node2"] {
        let left = on_node(
            node,
            As::Root,
            "docker images --format '{{.Repository}}:{{.Tag}}' | grep -E 'saved-|mdt-dsaved' | xargs -r docker rmi >/dev/null; \
             docker images --format '{{.Repository}}:{{.Tag}}' | grep -c ':partial' || true",
        );
        assert_eq!(left.success().stdout.trim(), "0", "{node}");
    }
    sh(As::Root, &format!("rm -rf {dir}")).success();
    assert_no_node_drained();
    assert_clean_within(30);
}

#[test]
fn a_users_credential_helper_runs_as_the_user_for_roots_pull() {
    let _g = docker_alone();
    // the user's Docker configuration names a credential helper for the test registry; root pulls
    // for them with what the helper says, and the helper runs as the user, never as root
    let helper = "/usr/local/bin/docker-credential-mdt";
    std::fs::write(
        helper,
        "#!/bin/sh\nread server\necho \"$(id -u) $server\" >> \"$HOME/mdt-cred.log\"\n\
         printf '{\"ServerURL\":\"%s\",\"Username\":\"mdt\",\"Secret\":\"s3cr3t-mdt\"}' \"$server\"\n",
    )
    .unwrap();
    sh(As::Root, &format!("chmod 0755 {helper}")).success();
    sh(
        As::User,
        "mkdir -p ~/.docker && rm -f ~/mdt-cred.log && \
         echo '{\"credHelpers\":{\"10.77.0.1:5000\":\"mdt\"}}' > ~/.docker/config.json",
    )
    .success();
    let forget = "docker images --format '{{.Repository}}:{{.Tag}}' | grep -E 'md/tiny|md-tiny-latest' \
                  | xargs -r docker rmi >/dev/null 2>&1; true";
    on_node("node1", As::Root, forget);
    let run = sh(As::User, "srun -w node1 -n1 --container-image=10.77.0.1:5000/md/tiny sh -c 'echo $MD_IMAGE_FLAVOUR'");
    let log = sh(As::User, "cat ~/mdt-cred.log; rm -f ~/mdt-cred.log ~/.docker/config.json").success();
    let _ = std::fs::remove_file(helper);
    on_node("node1", As::Root, forget);
    assert!(!run.stderr.contains("s3cr3t") && !run.stdout.contains("s3cr3t"), "{run}");
    assert_eq!(run.success().lines(), ["tiny"]);
    assert_eq!(log.lines(), ["1500 10.77.0.1:5000"], "the helper ran once, as the user: {log}");
    // root's copy of the login is gone with the pull
    let left = on_node("node1", As::Root, "ls -d /run/mpiexec-docker/*/docker-config-* 2>/dev/null | wc -l").success();
    assert_eq!(left.stdout.trim(), "0", "{left}");
    assert_no_node_drained();
}

#[test]
fn dockerd_uris_name_the_nodes_docker_images() {
    let _g = docker();
    let run = sh(
        As::User,
        &format!("srun -w node2 -n1 --container-image=dockerd://{OPENMPI} sh -c 'echo $MD_IMAGE_FLAVOUR'"),
    );
    assert_eq!(run.success().lines(), ["openmpi"]);
    // podman://IMAGE is the user's own Podman store: exported as the user (by root's helper, with the
    // user's ids), loaded into the daemon's store once under the user's own name for its id
    let uid = sh(As::Root, &format!("id -u {USER}")).success().stdout.trim().to_string();
    let imported = format!(
        "docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '/u{uid}/podman-[0-9a-f]*:imported$'"
    );
    on_node("node2", As::Root, &format!("{imported} | xargs -r docker rmi >/dev/null; true"));
    on_node("node2", As::User, &format!("podman tag {OPENMPI} localhost/mdt-mine:1")).success();
    for _ in 0..2 {
        let run = sh(
            As::User,
            "srun -w node2 -n1 --container-image=podman://localhost/mdt-mine:1 sh -c 'echo $MD_IMAGE_FLAVOUR; id -u'",
        );
        assert_eq!(run.success().lines(), ["openmpi", uid.as_str()]);
    }
    on_node("node2", As::User, "podman untag localhost/mdt-mine:1 localhost/mdt-mine:1; true");
    let listed = on_node("node2", As::Root, &format!("{imported} | wc -l")).success();
    assert_eq!(listed.stdout.trim(), "1", "{listed}");
    on_node("node2", As::Root, &format!("{imported} | xargs -r docker rmi >/dev/null")).success();
    // another user's Podman store has no such image: theirs is asked, not the first user's
    let run = sh(As::User2, "srun -w node2 -n1 --container-image=podman://localhost/mdt-mine:1 true");
    assert!(!run.ok() && run.stderr.contains("podman://localhost/mdt-mine:1"), "{run}");
    assert_eq!(run.stderr.lines().filter(|l| l.contains("mpiexec_docker: ")).count(), 1, "{run}");
    assert_no_node_drained();
}

#[test]
fn container_unshare_with_docker() {
    let _g = docker();
    let show = "sh -c 'readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts | tr \"\\n\" \" \"; grep -c : /proc/net/dev'";
    let words = |opts: &str| -> Vec<String> {
        let run = sh(As::User, &format!("srun -w node3 -n1 {opts} {show}")).success();
        run.stdout.split_whitespace().map(String::from).collect()
    };
    let bare = words("");
    assert_eq!(words(&format!("--container-image={OPENMPI}")), bare);
    let own = words(&format!("--container-image={OPENMPI} --container-unshare=net,ipc,uts"));
    assert_eq!(own.len(), 4, "{own:?}");
    for i in 0..3 {
        assert_ne!(own[i], bare[i], "{own:?} {bare:?}");
    }
    assert_eq!(own[3], "1", "{own:?}");
    assert_no_node_drained();
}

#[test]
fn container_scope_global_with_docker_keeps_the_container_as_the_users_alone() {
    let _g = docker_alone();
    let uid = sh(As::Root, &format!("id -u {USER}")).success().stdout.trim().to_string();
    let kept = format!("localhost/mpiexec-docker-named/u{uid}:dg1");
    let forget = || {
        on_node("node3", As::Root, &format!("docker rmi {kept} >/dev/null 2>&1; true"));
    };
    forget();
    let _forget = OnDrop(forget);
    let _plugstack = plugstack_with("container_scope=global");

    let run = sbatch(
        As::User,
        "-N1 -n1 -w node3",
        &format!("srun --container-image={OPENMPI} --container-name=dg1 sh -c 'echo kept > /var/tmp/dg1'"),
    );
    assert!(run.ok(), "{run}");
    assert_clean_within(30);
    // kept in the daemon's store under the user's own name
    let owner = on_node("node3", As::Root, &format!("docker image inspect --format ok {kept}"));
    assert_eq!(owner.success().stdout.trim(), "ok");
    // a later job of the user: its steps share it, as the first job's did
    let run = sbatch(
        As::User,
        "-N1 -n1 -w node3",
        "srun --container-name=dg1 sh -c 'cat /var/tmp/dg1; echo again >> /var/tmp/dg1; id -u'\n\
         srun --container-name=dg1 cat /var/tmp/dg1",
    );
    assert!(run.ok(), "{run}");
    let lines: Vec<String> = run.lines().into_iter().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(lines, ["kept", uid.as_str(), "kept", "again"], "{run}");
    assert_clean_within(30);
    // another user can neither name it nor reach it through the store
    let other = sh(As::User2, "srun -N1 -n1 -w node3 --container-name=dg1 true");
    assert!(!other.ok() && other.stderr.contains("give --container-image too"), "{other}");
    let other = sh(As::User2, &format!("srun -N1 -n1 -w node3 --container-image={kept} cat /var/tmp/dg1"));
    assert!(!other.ok() && other.stderr.contains("tool's own"), "{other}");
    drop(_plugstack);
    assert_no_node_drained();
}

/// Stops the Docker daemon of `node` and starts it again as `tests/cluster/up.sh` does, with
/// `extra` options; returns once it answers.
fn restart_dockerd(node: &str, extra: &str) {
    on_node(
        node,
        As::Root,
        &format!(
            "kill $(cat /run/mdt-node/dockerd.pid); for i in $(seq 200); do test -e /run/mdt-node/dockerd.pid || break; sleep 0.1; done; \
             setsid dockerd --config-file /run/mpiexec-docker-test/dockerd.json --data-root /var/lib/docker \
               --exec-root /run/mdt-node/docker --pidfile /run/mdt-node/dockerd.pid -H unix:///run/mdt-node/docker.sock \
               --bridge=none --iptables=false --ip-masq=false --insecure-registry 10.77.0.1:5000 {extra} \
               >> /var/log/mdt-dockerd-{node}.log 2>&1 < /dev/null & \
             for i in $(seq 100); do docker info >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1"
        ),
    )
    .success();
}

/// Whether a task of the test user sleeps on `node` (the step's task runs in its container).
fn task_sleeps(node: &str) -> bool {
    on_node(node, As::Root, "pgrep -u mpitest -x sleep").ok()
}

/// A step on `node` that sleeps 8 s, then says it carried on.
fn carrying_on_step(node: &str) -> String {
    format!("srun -w {node} -n1 --container-image={OPENMPI} sh -c 'sleep 8; echo $MD_IMAGE_FLAVOUR carried-on'")
}

/// The step of [`carrying_on_step`] completed; then nothing is left, no node is drained, and the next
/// step on `node` works.
fn assert_carried_on_and_recovered(node: &str, run: Run) {
    assert_eq!(run.success().lines(), ["openmpi carried-on"]);
    assert_clean_within(60);
    assert_no_node_drained();
    let next = sh(As::User, &format!("srun -w {node} -n1 --container-image={OPENMPI} sh -c 'echo $MD_IMAGE_FLAVOUR'"));
    assert_eq!(next.success().lines(), ["openmpi"]);
    assert_clean_within(30);
}

/// The state of the test user's Docker step containers on `node` (`docker ps` lines).
fn docker_steps(node: &str) -> String {
    on_node(node, As::Root, "docker ps -a --filter label=mpiexec-docker --format '{{.ID}} {{.State}}'").stdout
}

#[test]
fn fault_made_dockerd_restarted_under_a_running_step_leaves_its_tasks_running() {
    let _g = docker_alone();
    let node = "node3";
    let step = std::thread::spawn(move || sh(As::User, &carrying_on_step(node)));
    // the daemon goes once the step's task runs in the container (a restart before the task joined
    // fails the step at its start, with one line: not what this test is about)
    assert!(wait_for(60, || task_sleeps(node)), "the step's task never ran");
    // the daemon stops (its containers with it: no live-restore) and starts again, as up.sh starts it
    restart_dockerd(node, "");
    // the tasks are Slurm's processes, not the daemon's: they carry on in the container's file system
    assert_carried_on_and_recovered(node, step.join().expect("the srun thread"));
    reliability_row(
        "dockerd restarted (no live-restore) while a Docker container step runs",
        "the step's tasks carry on and complete (they are Slurm's processes; the daemon stopped only the container's idle placeholder)",
        "nothing (the step's end removed the stopped container)",
    );
}

#[test]
fn fault_made_root_helper_killed_at_each_phase_with_docker() {
    let _g = docker_alone();
    // root's helper, starting the container in the daemon for the user: killed before the run, between
    // the run and the move into the step's cgroup, and before the relay
    for phase in ["run", "cgroup", "relay"] {
        let run =
            srun_with_fault_at("node1", phase, &format!("--container-image={OPENMPI} echo task-ran"), "kill -9 $PID");
        assert!(!run.ok(), "{phase}: {run}");
        assert!(!run.stdout.contains("task-ran"), "{phase}: {run}");
        let ours = our_lines(&run);
        assert_eq!(ours.len(), 1, "{phase}: one line of ours: {run}");
        assert!(ours[0].contains("the helper was killed (SIGKILL)"), "{phase}: {run}");
        assert_recovered_on("node1", OPENMPI, "openmpi");
        reliability_row(
            &format!("`kill -9` of root's helper (Docker) at the start's {phase} phase"),
            "the step fails: `the helper was killed (SIGKILL)`",
            "nothing (the job's end removed the daemon's container)",
        );
    }
}

#[test]
fn fault_made_docker_client_killed_at_each_phase_with_docker() {
    let _g = docker_alone();
    // the docker client root's helper runs, killed as it runs: the daemon may go on with what it was
    // asked, the step fails with one line, and what the daemon made is removed at the job's end
    for phase in ["fetch", "run"] {
        let (run, fault) = srun_with_fault(
            "node1",
            phase,
            &format!("--container-image={OPENMPI} echo task-ran"),
            &kill_engine_calls(phase),
        );
        assert!(engine_calls_killed(&fault) >= 1, "{phase}: the docker client was killed: {fault}");
        assert!(!run.ok(), "{phase}: {run}");
        assert!(!run.stdout.contains("task-ran"), "{phase}: {run}");
        let ours = our_lines(&run);
        assert_eq!(ours.len(), 1, "{phase}: one line of ours: {run}");
        assert!(ours[0].contains("docker was killed (SIGKILL)"), "{phase}: {run}");
        assert_recovered_on("node1", OPENMPI, "openmpi");
        reliability_row(
            &format!("`kill -9` of the docker client at the start's {phase} phase"),
            "the step fails: `… docker was killed (SIGKILL)`",
            "nothing (the job's end removed the daemon's container)",
        );
    }
    let (run, fault) = srun_with_fault(
        "node1",
        "stop",
        &format!("--container-image={OPENMPI} echo task-ran"),
        &kill_engine_calls("stop"),
    );
    assert!(engine_calls_killed(&fault) >= 1, "the docker client was killed: {fault}");
    assert_eq!(run.success().lines(), ["task-ran"]);
    assert_clean_within(60);
    assert_no_node_drained();
    reliability_row(
        "`kill -9` of the docker client while the step's container is removed",
        "the step completes (its tasks had ended)",
        "nothing (the job's end removed the daemon's container)",
    );
}

#[test]
fn fault_made_dockerd_restarted_with_live_restore_under_a_running_step() {
    let _g = docker_alone();
    let node = "node3";
    // the site runs its daemon with live-restore: containers outlive a daemon restart
    restart_dockerd(node, "--live-restore");
    let _back = OnDrop(move || restart_dockerd(node, ""));
    let step = std::thread::spawn(move || sh(As::User, &carrying_on_step(node)));
    assert!(wait_for(60, || task_sleeps(node)), "the step's task never ran");
    let pause = || {
        on_node(node, As::Root, "pgrep -f '^/.mpiexec-docker/mpiexec_docker in-container pause' || true")
            .stdout
            .trim()
            .to_string()
    };
    let before = pause();
    assert!(!before.is_empty(), "the container's process runs");
    restart_dockerd(node, "--live-restore");
    // the container's process lives on under the new daemon (as the daemon's own view of it varies:
    // Docker 20.10 reports the container running, Docker 26 with its managed containerd "exited"),
    // and the step completes in it
    assert_eq!(pause(), before, "the container's process runs on across the restart");
    let seen = docker_steps(node);
    let state = seen.split_whitespace().nth(1).unwrap_or("gone").to_string();
    assert_carried_on_and_recovered(node, step.join().expect("the srun thread"));
    let version = on_node(node, As::Root, "docker version --format '{{.Server.Version}}'").stdout.trim().to_string();
    reliability_row(
        "dockerd restarted with live-restore while a Docker container step runs",
        &format!(
            "the container's process runs on (Docker {version} then reports the container {state}); the step completes and its end removes the container"
        ),
        "nothing",
    );
}

#[test]
fn fault_made_slurmstepd_killed_under_a_running_docker_step() {
    let _g = docker_alone();
    let node = "node2";
    let (job, _cancel) = sbatch_sleeping_step(node, OPENMPI, 319);
    kill_slurmstepd_then_cancel(node, &job, 319);
    assert_clean_within(60);
    assert_no_node_drained();
    let next = sh(As::User, &format!("srun -w {node} -n1 --container-image={OPENMPI} sh -c 'echo $MD_IMAGE_FLAVOUR'"));
    assert_eq!(next.success().lines(), ["openmpi"]);
    reliability_row(
        "slurmstepd of a Docker container step killed (SIGKILL), then the job cancelled",
        "the job's end (root's sweep) ends the orphaned task and removes the daemon's container",
        "nothing",
    );
}
