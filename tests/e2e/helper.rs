//! `mpiexec_docker` and `run_in_docker` on one machine (the login node of the test cluster), as root
//! (rootful Podman) and as the test user (rootless Podman), with the Open MPI, MPICH and Intel MPI
//! images; plus the bad-input paths, each checked to leave no container behind.
//!
//! The tests of this file run one at a time (see [`serial`]) so that "no container of ours is left"
//! is a meaningful check.

mod common;
use common::*;
use std::sync::{Mutex, MutexGuard};

const OPENMPI: &str = "localhost/md-openmpi";
const MPICH: &str = "localhost/md-mpich";
const INTELMPI: &str = "localhost/md-intelmpi";
const NOMPI: &str = "localhost/md-nompi";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    cluster();
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh working directory in SHARED owned by `who`.
fn workdir(who: As, tag: &str) -> String {
    let dir = format!("{SHARED}/helper-{tag}-{}", who.name());
    sh(As::Root, &format!("rm -rf {dir} && mkdir -p {dir} && chown {u}:{u} {dir}", u = who.name())).success();
    dir
}

/// Our containers in `who`'s store on the login node.
fn our_containers(who: As) -> Vec<String> {
    sh(who, "podman ps -a --filter label=mpiexec-docker --format '{{.Names}} {{.Status}}'").success().lines()
}

fn assert_nothing_left(who: As) {
    let left = our_containers(who);
    assert!(left.is_empty(), "containers left behind in {}'s store: {left:?}", who.name());
}

fn hello_lines(run: &Run) -> Vec<String> {
    let mut v: Vec<String> = run.lines().into_iter().filter(|l| l.starts_with("Hello from rank")).collect();
    v.sort();
    v
}

#[test]
fn hello_with_every_flavour_as_root_and_user() {
    let _g = serial();
    for who in [As::Root, As::User] {
        for (image, marker) in
            // Open MPI 4 on debian12, 5 (PRRTE) on debian13: the selector handles both
            [(OPENMPI, "(Open MPI v"), (MPICH, "MPICH Version"), (INTELMPI, "Intel(R) MPI Library 2021")]
        {
            let dir = workdir(who, "hello");
            let run = sh_in(who, &dir, &format!("mpiexec_docker {image} -np 2 mpi_hello"));
            assert!(run.ok(), "{run}");
            let lines = hello_lines(&run);
            assert_eq!(lines.len(), 2, "{run}");
            for (i, l) in lines.iter().enumerate() {
                assert!(l.starts_with(&format!("Hello from rank {i} of 2 on ")) && l.contains(marker), "{run}");
            }
            assert_nothing_left(who);
        }
    }
}

#[test]
fn current_directory_is_host_and_files_belong_to_the_user() {
    let _g = serial();
    for (who, uid) in [(As::User, "1500"), (As::Root, "0")] {
        let dir = workdir(who, "cwd");
        std::fs::write(format!("{dir}/input.txt"), "from the host\n").unwrap();
        let run = sh_in(
            who,
            &dir,
            &format!("run_in_docker {MPICH} sh -c 'pwd; cat input.txt; id -u; echo made > made-inside.txt'"),
        )
        .success();
        assert_eq!(run.lines(), ["/host", "from the host", uid], "{run}");
        let owner = sh(As::Root, &format!("stat -c %u {dir}/made-inside.txt")).success();
        assert_eq!(owner.stdout.trim(), uid, "a file made inside belongs to the caller on the host");
        assert_nothing_left(who);
    }
}

#[test]
fn compile_in_host_directory_then_run() {
    let _g = serial();
    let dir = workdir(As::User, "compile");
    std::fs::copy(format!("{}/../examples/hello/hello.c", env!("CARGO_MANIFEST_DIR")), format!("{dir}/hello.c"))
        .unwrap();
    sh_in(As::User, &dir, &format!("run_in_docker {MPICH} -- mpicc -o hello hello.c")).success();
    let run = sh_in(As::User, &dir, &format!("mpiexec_docker {MPICH} -np 2 ./hello")).success();
    assert_eq!(hello_lines(&run).len(), 2, "{run}");
    assert_nothing_left(As::User);
}

#[test]
fn exit_codes_come_back() {
    let _g = serial();
    for who in [As::Root, As::User] {
        let dir = workdir(who, "exit");
        let run = sh_in(who, &dir, &format!("run_in_docker {OPENMPI} sh -c 'exit 7'"));
        assert_eq!(run.code, Some(7), "{run}");
        let run = sh_in(who, &dir, &format!("run_in_docker {OPENMPI} sh -c 'kill -TERM $$'"));
        assert_eq!(run.code, Some(143), "death by SIGTERM is 128+15: {run}");
        let run = sh_in(who, &dir, &format!("mpiexec_docker {OPENMPI} -np 2 sh -c 'exit 3'"));
        assert_eq!(run.code, Some(3), "{run}");
        assert_nothing_left(who);
    }
}

#[test]
fn environment_rule() {
    let _g = serial();
    let dir = workdir(As::User, "env");
    let run = sh_in(
        As::User,
        &dir,
        &format!(
            "export OMPI_MCA_test_x=1 SLURM_FAKE=2 I_MPI_DEBUG=0 FI_PROVIDER=shm OMP_NUM_THREADS=3 MY_SECRET=s MY_LISTED=l \
             LD_LIBRARY_PATH=/host-only; PATH=/host-only/bin:$PATH; \
             run_in_docker -e MY_LISTED -e SET_HERE=v {OPENMPI} sh -c 'env | sort'"
        ),
    )
    .success();
    let env = run.stdout;
    for want in [
        "OMPI_MCA_test_x=1",
        "SLURM_FAKE=2",
        "I_MPI_DEBUG=0",
        "FI_PROVIDER=shm",
        "OMP_NUM_THREADS=3",
        "MY_LISTED=l",
        "SET_HERE=v",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} must be passed in:\n{env}");
    }
    assert!(!env.contains("MY_SECRET"), "unlisted variables stay out:\n{env}");
    assert!(!env.contains("/host-only"), "the host's PATH and LD_LIBRARY_PATH do not clobber the image's:\n{env}");
    let path = env.lines().find(|l| l.starts_with("PATH=")).unwrap();
    assert!(path.starts_with("PATH=/.mpiexec-docker/bin:") && path.contains("/usr/bin"), "{path}");
}

#[test]
fn shared_memory_and_namespaces_fit_mpi() {
    let _g = serial();
    let dir = workdir(As::User, "shm");
    let run = sh_in(
        As::User,
        &dir,
        &format!("run_in_docker {OPENMPI} sh -c 'df -k --output=size /dev/shm | tail -1; hostname; ulimit -l'"),
    )
    .success();
    let lines = run.lines();
    let shm_kb: u64 = lines[0].trim().parse().unwrap();
    assert!(shm_kb > 64 * 1024, "/dev/shm must not be the engines' 64 MB default: {run}");
    let host = sh(As::User, "hostname; ulimit -l").success().lines();
    assert_eq!(lines[1], host[0], "the host's network namespace (and name) are shared");
    assert_eq!(lines[2], host[1], "memlock limit as on the host");
}

#[test]
fn dry_run_prints_the_engine_command() {
    let _g = serial();
    let dir = workdir(As::User, "dry");
    let run = sh_in(As::User, &dir, &format!("mpiexec_docker --dry-run {OPENMPI} -np 2 mpi_hello")).success();
    let cmd = run.stdout;
    for part in [
        "podman run",
        "--userns keep-id",
        "--network host",
        "--ipc host",
        "--pid host",
        &format!("--volume {dir}:/host"),
        "--workdir /host",
    ] {
        assert!(cmd.contains(part), "{part} missing in {cmd}");
    }
    assert!(!cmd.contains("--privileged") && !cmd.contains("/dev:/dev"), "no blanket device or privilege: {cmd}");
    assert!(cmd.trim_end().ends_with("localhost/md-openmpi in-container mpiexec -np 2 mpi_hello"), "{cmd}");
    assert_nothing_left(As::User);
}

#[test]
fn gpus_option_chooses_the_nodes_gpus_through_cdi() {
    let _g = serial();
    // outside Slurm, `--gpus` (default all) names the node's GPUs; the node's CDI spec gives each
    // with its variable, and the driver's library and variable (rootless and rootful Podman)
    let probe = shell_quote(GPU_PROBE);
    for who in [As::User, As::Root] {
        let dir = workdir(who, "gpus");
        let view = |gpus: &str| {
            let run = sh_in(who, &dir, &format!("run_in_docker {gpus} {OPENMPI} sh -c {probe}")).success();
            let views = gpu_views(&run.stdout);
            assert_eq!(views.len(), 1, "{run}");
            assert!(!run.stderr.contains("note:"), "CDI covers these GPUs: no note: {run}");
            views[0].clone()
        };
        assert_eq!(view(""), GpuView::through_cdi(&[], &[0, 1, 2, 3]), "all by default");
        assert_eq!(view("--gpus all"), GpuView::through_cdi(&[], &[0, 1, 2, 3]));
        assert_eq!(view("--gpus 1,3"), GpuView::through_cdi(&[], &[1, 3]));
        assert_eq!(view("--gpus=2"), GpuView::through_cdi(&[], &[2]));
        assert_eq!(view("--gpus none"), GpuView::through_cdi(&[], &[]));
        assert_nothing_left(who);
    }
    let dir = workdir(As::User, "gpus-bad");
    let run = sh_in(As::User, &dir, &format!("run_in_docker --gpus first {OPENMPI} true"));
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--gpus 'first': write all, none, or GPU indexes"), "{run}");

    // without CDI (the site turned it off here): device nodes only, and one line saying what the
    // image then needs
    let config = format!("{dir}/no-cdi.yaml");
    std::fs::write(&config, "devices: {cdi: off}\n").unwrap();
    let run = sh_in(
        As::User,
        &dir,
        &format!("MPIEXEC_DOCKER_CONFIG={config} run_in_docker --gpus 0 {OPENMPI} sh -c {probe}"),
    )
    .success();
    let bare = GpuView {
        step_gpus: vec![],
        devices: vec!["nvidia0".into(), "nvidiactl".into()],
        vars: vec![],
        lib: String::new(),
    };
    assert_eq!(gpu_views(&run.stdout), [bare], "{run}");
    let notes: Vec<&str> = run.stderr.lines().filter(|l| l.contains("device nodes only")).collect();
    assert_eq!(notes.len(), 1, "{run}");
    assert!(notes[0].contains("the image must carry the driver's user-space libraries"), "{run}");
    assert_nothing_left(As::User);
}

#[test]
fn under_sbatch() {
    let _g = serial();
    let run = sbatch(As::User, "-N1 -n2", &format!("cd {SHARED} && mpiexec_docker {OPENMPI} mpi_hello"));
    assert!(run.ok(), "{run}");
    let lines = hello_lines(&run);
    assert_eq!(lines.len(), 2, "mpiexec takes the allocation's size: {run}");
    assert!(lines[0].contains(" of 2 on node"), "{run}");
}

/// Bad input: one clear line, the documented exit code, nothing left running.
fn bad(who: As, dir: &str, cmd: &str, code: i32, must_say: &[&str]) {
    let run = sh_in(who, dir, cmd);
    assert_eq!(run.code, Some(code), "{run}");
    let err = run.stderr.trim_end();
    assert_eq!(err.lines().count(), 1, "exactly one line of error: {run}");
    assert!(err.starts_with("mpiexec_docker: error: "), "{run}");
    for s in must_say {
        assert!(err.contains(s), "the error must say {s:?}: {run}");
    }
    assert_nothing_left(who);
}

#[test]
fn bad_input_gets_one_clear_line() {
    let _g = serial();
    for who in [As::User, As::Root] {
        let dir = workdir(who, "bad");
        bad(
            who,
            &dir,
            "mpiexec_docker localhost/no-such-image -np 1 true",
            125,
            &["cannot pull image 'localhost/no-such-image'"],
        );
        bad(
            who,
            &dir,
            "mpiexec_docker --pull never localhost/no-such-image -np 1 true",
            125,
            &["not available locally"],
        );
        bad(
            who,
            &dir,
            &format!("mpiexec_docker {NOMPI} -np 2 ./a.out"),
            127,
            &["image 'localhost/md-nompi' has no MPI launcher"],
        );
        bad(
            who,
            &dir,
            &format!("mpiexec_docker {OPENMPI} -np 2 ./no-such-program"),
            127,
            &["'./no-such-program' not found", "/host"],
        );
        bad(who, &dir, &format!("run_in_docker {OPENMPI} no-such-program"), 127, &["'no-such-program' not found"]);
        bad(who, &dir, &format!("PATH=/nonexistent {HELPER} {OPENMPI} -np 1 true"), 125, &["podman not found"]);
        // the docker client is installed on this machine kind, but no daemon runs for the helper tests
        bad(
            who,
            &dir,
            &format!("DOCKER_HOST=unix:///nonexistent.sock mpiexec_docker --engine docker {OPENMPI} -np 1 true"),
            125,
            &["docker does not work here"],
        );
        std::fs::write(format!("{dir}/config.yaml"), "engine: podman\nenigne: docker\n").unwrap();
        bad(
            who,
            &dir,
            &format!("MPIEXEC_DOCKER_CONFIG={dir}/config.yaml mpiexec_docker {OPENMPI} -np 1 true"),
            2,
            &["config.yaml", "enigne"],
        );
        bad(
            who,
            &dir,
            &format!("mpiexec_docker -m /no/such/dir:/data {OPENMPI} -np 1 true"),
            2,
            &["/no/such/dir does not exist"],
        );
        bad(who, &dir, &format!("mpiexec_docker -m relative:/data {OPENMPI} -np 1 true"), 2, &["SRC:DST"]);
        if who == As::User {
            // a mount may not give the container what its user cannot read on the host
            bad(who, &dir, &format!("run_in_docker -m /root:/r {OPENMPI} true"), 2, &["you may not read /root"]);
        }
        bad(who, &dir, "mpiexec_docker -- --privileged -np 1 true", 2, &["not a valid image name"]);
        bad(who, &dir, &format!("mpiexec_docker {OPENMPI}"), 2, &["nothing to run"]);
    }
}
