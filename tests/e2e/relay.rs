//! Across nodes: `mpiexec_docker` inside Slurm allocations, with the in-container srun/ssh relay
//! starting remote daemons through `run_in_docker`; as the non-root user with rootless Podman.

mod common;
use common::*;

const OPENMPI: &str = "localhost/md-openmpi";
const MPICH: &str = "localhost/md-mpich";
const INTELMPI: &str = "localhost/md-intelmpi";

fn hellos(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out.lines().filter(|l| l.starts_with("Hello from rank")).map(str::to_string).collect();
    v.sort();
    v
}

fn six_ranks_on_three_nodes(image: &str, extra: &str) {
    six_ranks_on_three_nodes_as(As::User, image, extra);
}

fn six_ranks_on_three_nodes_as(who: As, image: &str, extra: &str) {
    let _g = shared();
    // two ranks per node: the test nodes say they have 8 CPUs but share this machine's 2 cores, and
    // Open MPI 5 binds each rank to a core of the node where Slurm put it (Slurm 24.11 may pack 4 of 6
    // tasks onto node1: bare mpirun fails there the same way)
    let run = sbatch(
        who,
        "-N3 -n6 --ntasks-per-node=2 -t 2",
        &format!("cd {SHARED} && mpiexec_docker {extra} {image} mpi_hello"),
    );
    assert!(run.ok(), "{run}");
    let lines = hellos(&run.stdout);
    assert_eq!(lines.len(), 6, "{run}");
    for node in NODES {
        assert!(lines.iter().any(|l| l.contains(&format!(" of 6 on {node} "))), "no rank on {node}: {run}");
    }
}

#[test]
fn open_mpi_across_three_nodes() {
    six_ranks_on_three_nodes(OPENMPI, "");
}

#[test]
fn open_mpi_across_three_nodes_as_root() {
    // rootful Podman: root inside, where Open MPI (4: ORTE, 5: PRRTE) refuses to run unless told
    six_ranks_on_three_nodes_as(As::Root, OPENMPI, "");
}

#[test]
fn mpich_across_three_nodes() {
    // The three test nodes share one kernel (one boot_id), so MPICH's UCX takes them for one machine
    // and tries shared memory between containers of different "nodes". Real nodes differ; here the
    // ranks talk TCP.
    six_ranks_on_three_nodes(MPICH, "-e UCX_TLS=self,tcp");
}

#[test]
fn intel_mpi_across_three_nodes() {
    six_ranks_on_three_nodes(INTELMPI, "");
}

#[test]
fn salloc_runs_the_same_way() {
    let _g = shared();
    // salloc runs mpiexec_docker on the login node; the daemons start on the nodes through the relay
    let run = sh(As::User, &format!("cd {SHARED} && salloc -N3 -n3 -t 2 mpiexec_docker {OPENMPI} mpi_hello"));
    assert!(run.ok(), "{run}");
    let lines = hellos(&run.stdout);
    assert_eq!(lines.len(), 3, "{run}");
    for node in NODES {
        assert!(lines.iter().any(|l| l.contains(&format!(" of 3 on {node} "))), "no rank on {node}: {run}");
    }
}

#[test]
fn exit_code_of_rank_3_reaches_sbatch() {
    let _g = shared();
    let run = sbatch(
        As::User,
        "-N3 -n4 -t 2",
        &format!(
            "cd {SHARED} && mpiexec_docker {OPENMPI} sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 3 ]; then exit 5; fi'"
        ),
    );
    assert_eq!(run.code, Some(5), "the job's exit code is rank 3's: {run}");
}

#[test]
fn srun_inside_the_container_runs_remote_programs_in_the_image() {
    let _g = shared();
    // /usr/local/bin/mpi_hello exists only in the image; stdin and stdout flow through the relay
    let run = sbatch(
        As::User,
        "-N2 -n2 -t 2",
        &format!("cd {SHARED} && run_in_docker {OPENMPI} sh -c 'srun sh -c \"hostname; ls /usr/local/bin/mpi_hello\" | sort; echo piped | srun -n1 -N1 cat; srun -n1 -N1 sh -c \"exit 9\"; echo status=$?'"),
    );
    assert!(run.ok(), "{run}");
    // srun's own notes ("srun: error: … exit code 9") share the job's output file
    let lines: Vec<String> = run.lines().into_iter().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(
        lines,
        ["/usr/local/bin/mpi_hello", "/usr/local/bin/mpi_hello", "node1", "node2", "piped", "status=9"],
        "{run}"
    );
}

#[test]
fn a_command_that_is_not_relayable_is_refused() {
    let _g = shared();
    let conf = shared_file("relay-only-ssh.yaml", "relay_commands: [ssh]\n");
    let run = sbatch(
        As::User,
        "-N1 -n1 -t 2",
        &format!("cd {SHARED} && MPIEXEC_DOCKER_CONFIG={conf} run_in_docker {OPENMPI} srun hostname; echo status=$?"),
    );
    assert!(run.stdout.contains("'srun' may not be relayed"), "{run}");
    assert!(run.stdout.contains("status=127"), "{run}");
}

#[test]
fn the_relay_serves_only_its_own_container() {
    let _g = exclusive();
    // a job that keeps a relay open on node1
    let job = sh(As::User, &format!("cd {SHARED} && sbatch --parsable -N1 -w node1 -n1 -t 2 -o /dev/null --wrap 'run_in_docker {OPENMPI} sleep 60'"))
        .success();
    let job = job.stdout.trim().to_string();
    let mut sock = String::new();
    let found = wait_for(15, || {
        // the newest relay of the test user on node1 (the job's helper runs there)
        // (in the user's private state directory, made for them by root: see runtime_dir)
        let ls =
            on_node("node1", As::Root, "ls -td /run/mpiexec-docker/1500/run-*/relay/relay.sock 2>/dev/null | head -1");
        sock = ls.stdout.trim().to_string();
        !sock.is_empty()
    });
    assert!(found, "no relay socket appeared on node1");
    let probe = format!(
        "python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(s.recv(200))' {sock}"
    );
    let other = on_node("node1", As::User2, &probe);
    assert!(!other.ok() && other.stderr.contains("Permission denied"), "another user must not reach it: {other}");
    let outside = on_node("node1", As::User, &probe);
    assert!(
        outside.stdout.contains("only processes inside the container may use the relay"),
        "the same user outside the container is refused: {outside}"
    );
    sh(As::Root, &format!("scancel {job}")).success();
    assert_clean_within(20);
}

#[test]
fn scancel_leaves_nothing_on_any_node() {
    let _g = exclusive();
    let job = sh(
        As::User,
        &format!(
            "cd {SHARED} && sbatch --parsable -N3 -n3 -t 2 -o /dev/null --wrap 'mpiexec_docker {OPENMPI} sleep 120'"
        ),
    )
    .success();
    let job = job.stdout.trim().to_string();
    assert!(wait_for(30, || job_containers_on_every_node(&job)), "the job's containers never ran on all nodes");
    sh(As::Root, &format!("scancel {job}")).success();
    assert_clean_within(20);
}
