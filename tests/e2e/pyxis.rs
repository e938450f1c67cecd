//! A pyxis user changes nothing (issue 17): pyxis's mount syntax (flags joined by `+`, relative
//! sources, `tmpfs`, `umount`) and its refusals, `--container-name=NAME:FLAG`, the PyTorch variables
//! of enroot's hook, and the plugstack keys `sbatch_support=0`, `config=` and `execute_entrypoint=`
//! with pyxis's meaning.

mod common;
use common::*;

const OPENMPI: &str = "localhost/md-openmpi";

/// A fresh directory under the shared one, the test user's.
fn user_dir(name: &str) -> String {
    let dir = format!("{SHARED}/{name}");
    sh(As::Root, &format!("rm -rf {dir}; mkdir -p {dir}; chown {USER} {dir}")).success();
    dir
}

#[test]
fn mounts_take_pyxis_syntax_relative_sources_tmpfs_and_umount() {
    let _g = shared();
    let dir = user_dir("pyx-mounts");
    sh(As::User, &format!("mkdir {dir}/data {dir}/other && echo from-host > {dir}/data/file")).success();
    // the node's /tmp is mounted in every step container: umount takes it away again
    for node in NODES {
        on_node(node, As::User, "touch /tmp/mdt-pyx-host-tmp").success();
    }
    let mounts = "./data:/d:ro+rprivate,./other:/u:rshared,tmpfs:/scratch:size=16m+mode=1777,umount:/tmp";
    let script = "cat /d/file; touch /d/x 2>/dev/null && echo d-writable || echo d-read-only; \
                  grep ' /u ' /proc/self/mountinfo | grep -o shared: ; \
                  grep ' /scratch ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1; \
                  echo ok > /scratch/f && cat /scratch/f; \
                  test -e /tmp/mdt-pyx-host-tmp && echo host-tmp || echo image-tmp";
    let run = sh_in(
        As::User,
        &dir,
        &format!("srun -N1 -n1 --container-image={OPENMPI} --container-mounts={mounts} sh -c {}", shell_quote(script)),
    );
    for node in NODES {
        on_node(node, As::User, "rm -f /tmp/mdt-pyx-host-tmp");
    }
    assert_eq!(run.success().lines(), ["from-host", "d-read-only", "shared:", "tmpfs", "ok", "image-tmp"]);

    // the refusals: one line each, before or at the step's start, and nothing drained
    let refused = |mounts: &str, says: &str| {
        let run = sh_in(
            As::User,
            &dir,
            &format!("srun -N1 -n1 --container-image={OPENMPI} --container-mounts={mounts} true"),
        );
        assert!(!run.ok(), "{mounts}: {run}");
        assert!(run.stderr.contains(says), "{mounts}: wanted '{says}': {run}");
    };
    refused("/home:../home", "may not contain '..'");
    refused("data:/x", "write SRC:DST[:FLAGS]");
    refused("./data:/x:ro+exec=1", "unknown flag 'exec=1'");
    refused("umount:/nothing-here", "nothing is mounted at /nothing-here");
    refused("umount:/.mpiexec-docker/bin", "is mpiexec-docker's own mount");
    refused("./absent:/x", "does not exist on this host");
    // nofail: a missing source is left out
    let run = sh_in(
        As::User,
        &dir,
        &format!("srun -N1 -n1 --container-image={OPENMPI} --container-mounts=./absent:/x:nofail sh -c 'test -e /x || echo left-out'"),
    );
    assert_eq!(run.success().lines(), ["left-out"]);
    sh(As::Root, &format!("rm -rf {dir}")).success();
    assert_no_node_drained();
}

#[test]
fn container_names_take_pyxis_flags() {
    let _g = shared();
    let run = sbatch(
        As::User,
        "-N1 -n1 -w node2",
        &format!(
            "srun --container-image={OPENMPI} --container-name=p1:create sh -c 'echo made > /var/tmp/p1'\n\
             srun --container-image={OPENMPI} --container-name=p1:create true 2>&1 | grep -o 'already exists'\n\
             srun --container-name=p2:exec true 2>&1 | grep -o \"no container named 'p2' is running\"\n\
             srun --container-name=p1:exec cat /var/tmp/p1\n\
             srun --container-name=p1:no_exec cat /var/tmp/p1\n\
             srun --container-image={OPENMPI} --container-name=p1:auto cat /var/tmp/p1\n\
             srun --container-image={OPENMPI} --container-name=p1:later true 2>&1 | grep -o 'auto, create, exec or no_exec'"
        ),
    );
    assert!(run.ok(), "{run}");
    let lines: Vec<String> = run.lines().into_iter().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(
        lines,
        [
            "already exists",
            "no container named 'p2' is running",
            "made",
            "made",
            "made",
            "auto, create, exec or no_exec"
        ],
        "{run}"
    );
    assert_clean_within(20);
    assert_no_node_drained();
}

#[test]
fn pytorch_images_get_the_variables_of_enroots_hook() {
    let _g = shared();
    // an image that sets PYTORCH_VERSION, as NGC's PyTorch images do, saved as an image file
    let dir = user_dir("pyx-torch");
    sh_in(
        As::User,
        &dir,
        &format!(
            "printf 'FROM {OPENMPI}\\nENV PYTORCH_VERSION=2.5.0\\n' > Containerfile && \
             podman build -q -t localhost/mdt-pytorch . >/dev/null && \
             podman save -q -o md-pytorch.tar localhost/mdt-pytorch && podman rmi -f localhost/mdt-pytorch >/dev/null"
        ),
    )
    .success();
    let show = "echo $SLURM_JOB_ID $RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR $MASTER_PORT $OMP_NUM_THREADS";
    let run = sh(
        As::User,
        &format!("srun -N2 -n4 --ntasks-per-node=2 -w node[2-3] --container-image={dir}/md-pytorch.tar sh -c '{show}'"),
    )
    .success();
    let mut lines = run.lines();
    lines.sort();
    let job: u64 = lines[0].split(' ').next().unwrap().parse().unwrap();
    let port = 61000 + job % 4536;
    // block distribution: ranks 0-1 on node2, 2-3 on node3
    let want: Vec<String> = (0..4).map(|r| format!("{job} {r} {} 4 node2 {port} 1", r % 2)).collect();
    assert_eq!(lines, want, "{run}");
    // other images get none of them; a value the job sets stays
    let run = sh(As::User, &format!("srun -N1 -n1 --container-image={OPENMPI} sh -c 'echo ${{RANK:-none}}'"));
    assert_eq!(run.success().lines(), ["none"]);
    let run = sh(
        As::User,
        &format!("MASTER_PORT=999 srun -N1 -n1 --container-image={dir}/md-pytorch.tar sh -c 'echo $MASTER_PORT'"),
    );
    assert_eq!(run.success().lines(), ["999"]);
    forget_cached("md-pytorch", &["node1", "node2", "node3"]);
    sh(As::Root, &format!("rm -rf {dir}")).success();
}

#[test]
fn sbatch_support_0_and_config_keep_pyxis_meaning() {
    let _g = exclusive();
    const ALT: &str = "/etc/mpiexec-docker/alt-site.yaml";
    let _alt = Restore(ALT, None);
    let site_dir = user_dir("pyx-site");
    std::fs::write(format!("{site_dir}/file"), "site-file\n").unwrap();
    std::fs::write(ALT, format!("mounts: ['{site_dir}:/site-alt:ro']\n")).unwrap();
    let _plugstack = plugstack_with(&format!("sbatch_support=0 config={ALT} execute_entrypoint=1"));

    // sbatch and salloc do not have the options at all; srun has them
    for tool in ["sbatch --wrap true", "salloc true"] {
        let run = sh(As::User, &format!("{} --container-image={OPENMPI} {}", &tool[..6], &tool[6..]));
        assert!(!run.ok(), "{run}");
        assert!(run.stderr.contains("unrecognized option"), "{tool}: {run}");
    }
    // a batch script stays on the host even where the job's environment names an image (pyxis's
    // variable); its steps take the image, and the site file named by config= reaches the helper
    let run = sbatch(
        As::User,
        &format!("-N1 -n1 -w node1 --export=ALL,PYXIS_CONTAINER_IMAGE={OPENMPI}"),
        "echo batch:${MD_IMAGE_FLAVOUR:-host}\nsrun sh -c 'echo step:$MD_IMAGE_FLAVOUR; cat /site-alt/file'",
    );
    assert!(run.ok(), "{run}");
    assert_eq!(run.lines(), ["batch:host", "step:openmpi", "site-file"], "{run}");
    // execute_entrypoint=1: the image's entrypoint runs unless the user says --no-container-entrypoint
    // (where Slurm cannot run it, before 23.11, steps start without it rather than fail)
    let image = format!("{SHARED}/images/md-entrypoint.tar");
    let entered = |opt: &str| {
        let run = sh(As::User, &format!("srun -n1 {opt} --container-image={image} sh -c 'echo ${{MD_ENTERED:-no}}'"));
        run.success().stdout.trim().to_string()
    };
    assert_eq!(entered(""), if slurm_can_prepend() { "yes" } else { "no" });
    assert_eq!(entered("--no-container-entrypoint"), "no");
    drop(_plugstack);
    drop(_alt);
    sh(As::Root, &format!("rm -rf {site_dir}")).success();
    assert_no_node_drained();
    assert_clean_within(20);
}

/// Removes what the tool cached from image files named `stem` (login node and `nodes`): every test
/// run makes new files, each a new cache entry of its own.
fn forget_cached(stem: &str, nodes: &[&str]) {
    let script = format!(
        "podman images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '^localhost/mpiexec-docker-cache/{stem}:' \
         | xargs -r podman rmi -f >/dev/null; true"
    );
    sh(As::User, &script).success();
    for node in nodes {
        on_node(node, As::User, &script).success();
    }
}

/// A squashfs image as `enroot import` makes them: the root file system of `image`, with `env` in its
/// /etc/environment (where enroot keeps an image's variables), made with mksquashfs into `dir`.
fn make_sqsh(dir: &str, image: &str, env: &str, file: &str) {
    sh_in(
        As::User,
        dir,
        &format!(
            "c=$(podman create {image} true) && mkdir rootfs && \
             podman export $c | tar -xp -C rootfs --exclude=./dev 2>/dev/null; podman rm -f $c >/dev/null; \
             echo {env} >> rootfs/etc/environment && \
             mksquashfs rootfs {file} -quiet -no-progress -noappend -all-root >/dev/null; \
             chmod -R u+w rootfs; rm -rf rootfs; test -s {file}"
        ),
    )
    .success();
}

#[test]
fn squashfs_images_start_with_the_plugin_and_the_helper() {
    let _g = shared();
    let dir = user_dir("pyx-sqsh");
    make_sqsh(&dir, OPENMPI, "MD_SQSH_VAR=from-environment", "mdt-sqsh.sqsh");
    // the plugin, across nodes, with MPI; its variables from the file system's /etc/environment
    let run = sh_in(
        As::User,
        &dir,
        "srun --mpi=pmix -N2 -n2 -w node[1-2] --container-image=./mdt-sqsh.sqsh sh -c 'echo $MD_SQSH_VAR; mpi_hello'",
    );
    let mut lines = run.success().lines();
    lines.sort();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(&lines[2..], ["from-environment", "from-environment"]);
    assert!(
        lines[0].starts_with("Hello from rank 0 of 2") && lines[1].starts_with("Hello from rank 1 of 2"),
        "{lines:?}"
    );
    // the helper, and what the step wrote into the container is gone: each start is the file's own
    let run = sh_in(As::User, &dir, "mpiexec_docker ./mdt-sqsh.sqsh -n 2 mpi_hello");
    assert_eq!(run.success().lines().iter().filter(|l| l.starts_with("Hello from rank")).count(), 2);
    let run = sh_in(
        As::User,
        &dir,
        "srun -N1 -n1 -w node1 --container-image=./mdt-sqsh.sqsh sh -c 'touch /var/tmp/written' && \
         srun -N1 -n1 -w node1 --container-image=./mdt-sqsh.sqsh sh -c 'test -e /var/tmp/written && echo kept || echo pristine'",
    );
    assert_eq!(run.success().lines(), ["pristine"]);
    // a file that is neither an image archive nor squashfs is refused with one line
    std::fs::write(format!("{dir}/not.sqsh"), "hsq").unwrap();
    let run = sh_in(As::User, &dir, "srun -N1 -n1 --container-image=./not.sqsh true");
    assert!(
        !run.ok()
            && run
                .stderr
                .contains("not a tar archive (an image file is a docker-archive, an oci-archive or a squashfs"),
        "{run}"
    );
    forget_cached("mdt-sqsh", &["node1", "node2"]);
    sh(As::Root, &format!("rm -rf {dir}")).success();
    assert_no_node_drained();
}

#[test]
fn container_save_writes_an_image_file_the_next_step_starts_from() {
    let _g = shared();
    let dir = user_dir("pyx-save");
    let run = sh_in(
        As::User,
        &dir,
        &format!(
            "srun -N2 -n2 -w node[1-2] --container-image={OPENMPI} --container-save=./mdt-saved.tar \
             sh -c 'echo kept > /var/tmp/saved-marker'"
        ),
    );
    run.success();
    // the user's file, complete (nothing partial beside it), and what the step wrote is in it
    let listing = sh_in(As::User, &dir, "stat -c '%U %n' * .[!.]* 2>/dev/null; true").success();
    assert_eq!(listing.lines(), [format!("{USER} mdt-saved.tar")], "{listing}");
    let run =
        sh_in(As::User, &dir, "srun -N1 -n1 -w node3 --container-image=./mdt-saved.tar cat /var/tmp/saved-marker");
    assert_eq!(run.success().lines(), ["kept"]);
    let run = sh_in(As::User, &dir, "run_in_docker ./mdt-saved.tar cat /var/tmp/saved-marker");
    assert_eq!(run.success().lines(), ["kept"]);
    // a directory is refused before anything runs; a place the user cannot write is said in one
    // line and leaves nothing
    let run = sh_in(As::User, &dir, &format!("srun -n1 --container-image={OPENMPI} --container-save=out/ true"));
    assert!(!run.ok() && run.stderr.contains("give a file path, not a directory"), "{run}");
    let run =
        sh_in(As::User, &dir, &format!("srun -n1 --container-image={OPENMPI} --container-save=/etc/saved.tar true"));
    let said =
        run.stderr.lines().filter(|l| l.contains("--container-save=/etc/saved.tar: cannot write in /etc")).count();
    assert_eq!(said, 1, "{run}");
    // (the tasks' exit codes stay theirs: Slurm reports a failed task_exit without changing them)
    assert!(!std::path::Path::new("/etc/saved.tar").exists());
    forget_cached("mdt-saved", &["node3"]);
    sh(As::Root, &format!("rm -rf {dir}")).success();
    assert_no_node_drained();
    assert_clean_within(20);
}

#[test]
fn a_running_jobs_named_container_can_be_entered_from_outside() {
    let _g = shared();
    // what pyxis's users ask for (its issues 31, 115): a step of a running job, started from another
    // shell with --overlap, enters the job's named container and sees what its steps made there
    let job = sh(
        As::User,
        &format!(
            "sbatch --parsable -N1 -n1 -w node3 -t 5 --wrap \"srun --container-image={OPENMPI} --container-name=live \
             sh -c 'echo made-inside > /var/tmp/live-marker; sleep 120'\""
        ),
    )
    .success()
    .stdout
    .trim()
    .to_string();
    let attach =
        format!("srun --overlap --jobid {job} -w node3 -n1 --container-name=live:exec cat /var/tmp/live-marker");
    let mut seen = String::new();
    let entered = wait_for(60, || {
        let run = sh(As::User, &attach);
        seen = format!("{run}");
        run.ok() && run.stdout.trim() == "made-inside"
    });
    sh(As::User, &format!("scancel {job}")).success();
    assert!(entered, "{seen}");
    // another user cannot
    let run = sh(As::User2, &attach);
    assert!(!run.ok(), "{run}");
    assert_clean_within(30);
    assert_no_node_drained();
}

#[test]
fn enroots_local_store_uris_name_the_engines_own_images() {
    let _g = shared();
    // podman://IMAGE: the user's own Podman images on the node, used as they are, never pulled
    on_node("node1", As::User, &format!("podman tag {OPENMPI} localhost/mdt-mine:1")).success();
    let run = sh(
        As::User,
        "srun -w node1 -n1 --container-image=podman://localhost/mdt-mine:1 sh -c 'echo $MD_IMAGE_FLAVOUR'",
    );
    on_node("node1", As::User, "podman untag localhost/mdt-mine:1 localhost/mdt-mine:1; true");
    assert_eq!(run.success().lines(), ["openmpi"]);
    let run = sh(As::User, "srun -w node1 -n1 --container-image=podman://localhost/mdt-absent:1 true");
    assert!(!run.ok() && run.stderr.contains("is not in podman's images on this node"), "{run}");
    // dockerd://IMAGE is the node's Docker store, read with the user's rights: the daemon refuses
    // the test user (not in the docker group), in one line
    let run = sh(As::User, &format!("srun -w node1 -n1 --container-image=dockerd://{OPENMPI} true"));
    assert!(!run.ok() && run.stderr.contains("the node's docker refuses you"), "{run}");
    assert_eq!(run.stderr.lines().filter(|l| l.contains("mpiexec_docker: ")).count(), 1, "{run}");
    // whom the daemon lets in (root here) gets the image exported into their Podman store once, under
    // its id, and started from there at every later step
    let imported = "podman images --format '{{.Repository}}:{{.Tag}}' | grep '/dockerd-[0-9a-f]*:imported$'";
    on_node("node1", As::Root, &format!("{imported} | xargs -r podman rmi >/dev/null; true"));
    for _ in 0..2 {
        let run = sh(
            As::Root,
            &format!("srun -w node1 -n1 --container-image=dockerd://{OPENMPI} sh -c 'echo $MD_IMAGE_FLAVOUR'"),
        );
        assert_eq!(run.success().lines(), ["openmpi"]);
    }
    let listed = on_node("node1", As::Root, &format!("{imported} | wc -l")).success();
    assert_eq!(listed.stdout.trim(), "1", "{listed}");
    on_node("node1", As::Root, &format!("{imported} | xargs -r podman rmi >/dev/null")).success();
    assert_no_node_drained();
}

#[test]
fn container_unshare_gives_the_container_namespaces_of_its_own() {
    let _g = shared();
    let show = "sh -c 'readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts | tr \"\\n\" \" \"; grep -c : /proc/net/dev'";
    let run = |opts: &str| {
        let run = sh(As::User, &format!("srun -w node1 -n1 {opts} {show}")).success();
        let words: Vec<String> = run.stdout.split_whitespace().map(String::from).collect();
        assert_eq!(words.len(), 4, "{run}");
        words
    };
    let bare = run("");
    // by default the host's (MPI across nodes needs its network)
    assert_eq!(run(&format!("--container-image={OPENMPI}")), bare);
    let own = run(&format!("--container-image={OPENMPI} --container-unshare=net,ipc,uts"));
    for i in 0..3 {
        assert_ne!(own[i], bare[i], "namespace {i} of its own: {own:?} {bare:?}");
    }
    assert_eq!(own[3], "1", "only loopback in a network namespace of its own: {own:?}");
    let uts = run(&format!("--container-image={OPENMPI} --container-unshare=uts"));
    assert_eq!((&uts[0], &uts[1]), (&bare[0], &bare[1]));
    assert_ne!(uts[2], bare[2]);
    let run = sh(As::User, &format!("srun -n1 --container-image={OPENMPI} --container-unshare=pid true"));
    assert!(!run.ok() && run.stderr.contains("'pid' is not a namespace that can be unshared"), "{run}");
    assert_no_node_drained();
}

#[test]
fn the_images_files_are_the_users_to_use_as_with_pyxis() {
    let _g = shared();
    // enroot unpacks an image as its user: /root (0700) and root-only files of the image are theirs
    // to read and run; another user's files on the host stay closed, and what a task creates on the
    // host is the user's
    let dir = user_dir("pyx-files");
    on_node("node1", As::User2, "echo secret-of-user-2 > /tmp/mdt-u2-secret; chmod 0600 /tmp/mdt-u2-secret").success();
    let script = "ls -d /root/. >/dev/null && echo root-dir-listed; \
                  head -c0 /etc/shadow && echo shadow-read; \
                  cat /tmp/mdt-u2-secret 2>/dev/null || echo other-users-file-closed; \
                  touch made-here && stat -c %u made-here";
    let run =
        sh_in(As::User, &dir, &format!("srun -w node1 -n1 --container-image={OPENMPI} sh -c {}", shell_quote(script)));
    on_node("node1", As::User2, "rm -f /tmp/mdt-u2-secret");
    assert_eq!(run.success().lines(), ["root-dir-listed", "shadow-read", "other-users-file-closed", "1500"]);
    sh(As::Root, &format!("rm -rf {dir}")).success();
}

#[test]
fn container_scope_global_keeps_named_containers_for_the_users_later_jobs() {
    let _g = exclusive();
    let forget = || {
        for who in [As::User, As::User2] {
            on_node("node2", who, "mpiexec_docker images remove-container g1 >/dev/null 2>&1; true");
        }
    };
    forget();
    let _forget = OnDrop(forget);
    let _plugstack = plugstack_with("container_scope=global");

    // a first job writes into its named container, with a variable of its own in its environment
    let run = sbatch(
        As::User,
        "-N1 -n1 -w node2 --export=ALL,MD_FIRST_JOB_ONLY=1",
        &format!("srun --container-image={OPENMPI} --container-name=g1 sh -c 'echo kept > /var/tmp/g1'"),
    );
    assert!(run.ok(), "{run}");
    // the job's end keeps the container (as an image of the user's) and leaves no container behind
    assert_clean_within(30);
    let listed = on_node("node2", As::User, "mpiexec_docker images").success();
    assert!(listed.stdout.contains("kept named containers (container_scope=global): g1"), "{listed}");

    // a later job of the user starts from it without naming the image, with the image's own
    // environment, not the first job's; create refuses it, and another user has no container g1
    let run = sbatch(
        As::User,
        "-N1 -n1 -w node2",
        "srun --container-image=localhost/md-openmpi --container-name=g1:create true 2>&1 | grep -o 'is kept on this node'\n\
         srun --container-name=g1 sh -c 'cat /var/tmp/g1; echo $MD_IMAGE_FLAVOUR ${MD_FIRST_JOB_ONLY:-unset}; \
         echo again >> /var/tmp/g1'\n\
         srun --container-name=g1:exec cat /var/tmp/g1",
    );
    assert!(run.ok(), "{run}");
    let lines: Vec<String> = run.lines().into_iter().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(lines, ["is kept on this node", "kept", "openmpi unset", "kept", "again"], "{run}");
    let other = sh(As::User2, "srun -N1 -n1 -w node2 --container-name=g1 true");
    assert!(!other.ok() && other.stderr.contains("give --container-image too"), "{other}");
    assert_clean_within(30);

    // what the second job added is kept too; the user removes the container, and it is gone
    let run = sh(As::User, "srun -N1 -n1 -w node2 --container-name=g1 cat /var/tmp/g1");
    assert_eq!(run.success().lines(), ["kept", "again"]);
    assert_clean_within(30);
    let removed = on_node("node2", As::User, "mpiexec_docker images remove-container g1").success();
    assert_eq!(removed.stdout.trim(), "removed container g1");
    let gone = sh(As::User, "srun -N1 -n1 -w node2 --container-name=g1:exec true");
    assert!(!gone.ok() && gone.stderr.contains("no container named 'g1'"), "{gone}");
    let again = on_node("node2", As::User, "mpiexec_docker images remove-container g1");
    assert!(!again.ok() && again.stderr.contains("no container named 'g1' is kept"), "{again}");
    drop(_plugstack);
    assert_no_node_drained();
}

#[test]
fn the_sites_registry_login_serves_the_users_own_pulls_and_stays_the_sites() {
    let _g = exclusive();
    // the test registry behind a login (tests/cluster/up.sh): user mdt, password mdt-site-secret
    const REGISTRY: &str = "10.77.0.1:5001";
    const SITE: &str = "/etc/mpiexec-docker/config.yaml";
    const AUTH: &str = "/etc/mpiexec-docker/mdt-registry-auth.json";
    let _site = Restore(SITE, std::fs::read(SITE).ok());
    let _auth = Restore(AUTH, None);
    let image = format!("{REGISTRY}/md/tiny");
    let forget = format!(
        "podman images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '{REGISTRY}' | xargs -r podman rmi -f >/dev/null 2>&1; true"
    );
    on_node("node1", As::User, &forget);
    // no login anywhere: the registry refuses the user's pull, in one line of ours
    let run = sh(As::User, &format!("srun -w node1 -n1 --container-image={image} true"));
    assert!(!run.ok(), "{run}");
    let ours: Vec<&str> = run.stderr.lines().filter(|l| l.contains("mpiexec_docker: ")).collect();
    assert_eq!(ours.len(), 1, "{run}");
    assert!(ours[0].contains("authentication required") || ours[0].contains("unauthorized"), "{run}");

    // the site's login for that registry, in a file only root may read
    sh(
        As::Root,
        &format!(
            "printf '{{\"auths\":{{\"{REGISTRY}\":{{\"auth\":\"%s\"}}}}}}\\n' \"$(printf mdt:mdt-site-secret | base64)\" > {AUTH} \
             && chmod 0600 {AUTH} && printf 'registry_auth: {AUTH}\\n' >> {SITE}"
        ),
    )
    .success();
    let run = sh(As::User, &format!("srun -w node1 -n1 --container-image={image} sh -c 'echo $MD_IMAGE_FLAVOUR'"));
    let secret = sh(As::User, "printf mdt:mdt-site-secret | base64").success().stdout.trim().to_string();
    assert!(!format!("{run}").contains("mdt-site-secret") && !format!("{run}").contains(&secret), "{run}");
    assert_eq!(run.success().lines(), ["tiny"]);
    // the file stays closed to the user, and the copy the pull used is gone
    let read = sh(As::User, &format!("cat {AUTH}"));
    assert!(!read.ok() && read.stderr.contains("Permission denied"), "{read}");
    let left = on_node(
        "node1",
        As::User,
        "ls -d /run/user/$(id -u)/mpiexec-docker/docker-config-* /tmp/mpiexec-docker-$(id -u)/docker-config-* 2>/dev/null | wc -l",
    );
    assert_eq!(left.success().stdout.trim(), "0");
    on_node("node1", As::User, &forget);
    drop(_site);
    drop(_auth);
    assert_no_node_drained();
}
