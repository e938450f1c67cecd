//! Images at cluster scale: a real registry (Debian's docker-registry on the cluster network) and image
//! files on the shared file system, fetched once per node and reused, listed and pruned, and clear
//! errors that leave the cache clean. The tests use `md-tiny` (busybox), which no node has preloaded.

mod common;
use common::*;

const NODE_IPS: [&str; 3] = ["10.77.0.11", "10.77.0.12", "10.77.0.13"];

fn tiny_archive() -> String {
    format!("{SHARED}/images/md-tiny.tar")
}

fn tiny_oci() -> String {
    format!("{SHARED}/images/md-tiny.oci.tar")
}

/// Removes md-tiny from every node's store for `who`: the registry's name and everything we cached.
fn forget_tiny_everywhere(who: As) {
    for node in NODES {
        on_node(
            node,
            who,
            &format!("podman rmi -f {REGISTRY}/md/tiny:latest >/dev/null 2>&1; mpiexec_docker images prune >/dev/null"),
        )
        .success();
    }
}

#[test]
fn registry_images_are_pulled_once_per_node_and_reused() {
    let _g = exclusive();
    forget_tiny_everywhere(As::User);
    let from = log_lines();
    // 12 tasks on 3 nodes start at once: one pull per node
    let run = sh(
        As::User,
        &format!("srun -N3 -n12 --container-image={REGISTRY}/md/tiny sh -c 'echo $(hostname) $MD_IMAGE_FLAVOUR'"),
    )
    .success();
    assert_eq!(run.lines().iter().filter(|l| l.ends_with(" tiny")).count(), 12, "{run}");
    let fetched = blob_fetches(from);
    for ip in NODE_IPS {
        let blobs: Vec<usize> = fetched.iter().filter(|((i, _), _)| i == ip).map(|(_, n)| *n).collect();
        assert!(!blobs.is_empty(), "node {ip} pulled nothing: {fetched:?}");
        assert!(blobs.iter().all(|&n| n == 1), "node {ip} fetched a blob more than once: {fetched:?}");
    }
    let per_node = fetched.len() / NODE_IPS.len();
    assert_eq!(fetched.len(), per_node * NODE_IPS.len(), "every node fetched the same blobs: {fetched:?}");

    // a second job reuses what every node has: no blob is fetched again
    let from = log_lines();
    sh(As::User, &format!("srun -N3 -n3 --container-image={REGISTRY}/md/tiny true")).success();
    assert!(blob_fetches(from).is_empty(), "the cache is reused: {:?}", blob_fetches(from));

    // pyxis's REGISTRY#IMAGE form names the same image
    let from = log_lines();
    let run = sh(As::User, &format!("srun -N1 -n1 --container-image={REGISTRY}#md/tiny cat /etc/motd")).success();
    assert_eq!(run.stdout.trim(), "md-tiny", "{run}");
    assert!(blob_fetches(from).is_empty(), "{:?}", blob_fetches(from));

    // what the tool fetched is listed, and pruned
    let list = on_node("node1", As::User, "mpiexec_docker images").success();
    assert!(list.stdout.contains("mpiexec-docker-cache/10.77.0.1-5000-md-tiny-latest:pulled"), "{list}");
    forget_tiny_everywhere(As::User);
    let list = on_node("node1", As::User, "mpiexec_docker images; podman images --format '{{.Repository}}'").success();
    assert!(!list.stdout.contains("tiny"), "{list}");
}

#[test]
fn image_files_on_shared_storage_work_for_the_plugin_and_the_helper() {
    let _g = exclusive();
    for who in [As::User, As::Root] {
        forget_tiny_everywhere(who);
        for form in
            [tiny_archive(), format!("docker-archive:{}", tiny_archive()), format!("oci-archive:{}", tiny_oci())]
        {
            let run =
                sh(who, &format!("srun -N3 -n3 --container-image={form} sh -c 'echo $(hostname) $(cat /etc/motd)'"))
                    .success();
            let mut lines = run.lines();
            lines.sort();
            let want: Vec<String> = NODES.iter().map(|n| format!("{n} md-tiny")).collect();
            assert_eq!(lines, want, "{run}");
        }
        // the helper, with a path relative to the current directory, also for the remote side of the relay
        let run = sh_in(who, SHARED, "run_in_docker ./images/md-tiny.tar cat /etc/motd").success();
        assert_eq!(run.stdout.trim(), "md-tiny", "{run}");
        let run = sbatch(
            who,
            "-N3 -n3",
            &format!("cd {SHARED} && run_in_docker ./images/md-tiny.tar srun -N3 -n3 sh -c 'echo $(cat /etc/motd) $(hostname)'"),
        );
        let mut lines = run.lines();
        lines.sort();
        let want: Vec<String> = NODES.iter().map(|n| format!("md-tiny {n}")).collect();
        assert_eq!(lines, want, "{run}");
        let run = sh_in(who, SHARED, "mpiexec_docker images").success();
        assert!(run.stdout.contains("mpiexec-docker-cache/md-tiny:"), "{run}");
        // only our name was added to the store, and prune takes it away
        let names = on_node("node2", who, "podman images --format '{{.Repository}}:{{.Tag}}' | grep tiny").success();
        assert!(names.lines().iter().all(|l| l.starts_with("localhost/mpiexec-docker-cache/md-tiny:")), "{names}");
        forget_tiny_everywhere(who);
        let names = on_node("node2", who, "podman images --format '{{.Repository}}' | grep tiny || true").success();
        assert!(names.stdout.trim().is_empty(), "{names}");
        sh_in(who, SHARED, "mpiexec_docker images prune").success();
    }
}

#[test]
fn images_that_cannot_be_had_fail_clearly_and_leave_the_cache_clean() {
    let _g = exclusive();
    forget_tiny_everywhere(As::User);
    let whole = std::fs::read(tiny_archive()).unwrap();
    let truncated = format!("{SHARED}/images-test-truncated.tar");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let corrupt = format!("{SHARED}/images-test-corrupt.tar");
    std::fs::write(&corrupt, b"not an image archive, just some bytes that happen to be here ...").unwrap();
    for (image, says) in [
        ("10.77.0.1:5999/md/tiny".to_string(), "connection refused"),
        (format!("{REGISTRY}/md/tiny:no-such-tag"), "manifest unknown"),
        (truncated.clone(), "truncated archive"),
        (corrupt.clone(), "not a tar archive"),
        (format!("{SHARED}/no-such-image.tar"), "No such file"),
    ] {
        let run = sh(As::User, &format!("srun -N2 -n2 --container-image={image} true"));
        assert!(!run.ok(), "{run}");
        let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("mpiexec_docker:")).collect();
        assert!(!errors.is_empty() && errors.iter().all(|l| l.contains(says) && l.contains(&image)), "{image}: {run}");
        let run = sh_in(As::User, SHARED, &format!("run_in_docker {image} true"));
        assert_eq!(run.code, Some(125), "{run}");
        assert_eq!(run.stderr.lines().count(), 1, "one line: {run}");
        assert!(run.stderr.contains(says), "{run}");
    }
    for node in NODES {
        let list = on_node(node, As::User, "mpiexec_docker images | tail -1").success();
        assert_eq!(list.stdout.trim(), "0 image(s), 0 B", "nothing half-cached on {node}: {list}");
    }
    assert_no_node_drained();
    assert_clean_within(20);
    let _ = std::fs::remove_file(truncated);
    let _ = std::fs::remove_file(corrupt);
}

#[test]
fn long_fetches_report_progress_in_batch_logs() {
    let _g = exclusive();
    forget_tiny_everywhere(As::User);
    // a line every 50 ms here (10 s by default) while the image is fetched
    let run = sbatch(
        As::User,
        "-N1 -n1 -w node3",
        &format!("MPIEXEC_DOCKER_PROGRESS_INTERVAL=0.05 run_in_docker {REGISTRY}/md/tiny cat /etc/motd 2>&1"),
    );
    assert!(run.ok(), "{run}");
    assert!(run.stdout.contains(&format!("mpiexec_docker: pulling {REGISTRY}/md/tiny on node3: ")), "{run}");
    assert!(run.stdout.trim_end().ends_with("md-tiny"), "{run}");
    // the plugin passes the lines on to srun's terminal
    forget_tiny_everywhere(As::User);
    let run = sh(
        As::User,
        &format!(
            "MPIEXEC_DOCKER_PROGRESS_INTERVAL=0.05 srun -w node2 -n1 --container-image={REGISTRY}/md/tiny true 2>&1"
        ),
    )
    .success();
    assert!(run.stdout.contains(&format!("mpiexec_docker: pulling {REGISTRY}/md/tiny on node2: ")), "{run}");
    // a hostile interval from the job's environment neither floods the logs nor breaks the helper:
    // at most one line a second is passed on, and a huge value is a long interval, not a crash
    for every in ["1e-9", "1e300"] {
        forget_tiny_everywhere(As::User);
        let t0 = std::time::Instant::now();
        let run = sh(
            As::User,
            &format!(
                "MPIEXEC_DOCKER_PROGRESS_INTERVAL={every} srun -w node2 -n1 --container-image={REGISTRY}/md/tiny cat /etc/motd 2>&1"
            ),
        )
        .success();
        let lines = run.stdout.lines().filter(|l| l.contains("mpiexec_docker: pulling")).count();
        assert!(lines as u64 <= t0.elapsed().as_secs() + 1, "{every}: {lines} progress lines: {run}");
        assert!(run.stdout.trim_end().ends_with("md-tiny"), "{run}");
    }
    forget_tiny_everywhere(As::User);
}

#[test]
fn a_changed_tag_is_seen_with_pull_newer() {
    let _g = exclusive();
    // the registry's md/tiny:changing is rewritten between two runs
    let push = |flavour: &str| {
        sh(
            As::Root,
            &format!(
                "set -e; d=$(mktemp -d); podman image exists localhost/md-tiny:latest || \
                 podman load -q -i {archive} >/dev/null; \
                 printf 'FROM localhost/md-tiny:latest\\nENV MD_IMAGE_FLAVOUR={flavour}\\n' > $d/Containerfile; \
                 podman build -q -t localhost/md-changing:latest $d >/dev/null; \
                 podman push -q localhost/md-changing:latest {REGISTRY}/md/tiny:changing; rm -rf $d",
                archive = tiny_archive()
            ),
        )
        .success();
    };
    let flavour = |pull: &str| {
        let run = sh_in(
            As::User,
            SHARED,
            &format!("run_in_docker {pull} {REGISTRY}/md/tiny:changing sh -c 'echo $MD_IMAGE_FLAVOUR'"),
        )
        .success();
        run.stdout.trim().to_string()
    };
    sh(As::User, &format!("podman rmi -f {REGISTRY}/md/tiny:changing >/dev/null 2>&1; true")).success();
    push("one");
    assert_eq!(flavour(""), "one");
    push("two");
    assert_eq!(flavour(""), "one", "pull: missing (the default) keeps the cached image");
    assert_eq!(flavour("--pull newer"), "two", "pull: newer sees the changed tag");
    assert_eq!(flavour(""), "two");
    sh(As::User, "mpiexec_docker images prune >/dev/null").success();
}

#[test]
fn with_a_job_fetch_dir_the_registry_serves_each_blob_once_per_job() {
    let _g = exclusive();
    let (_site, dir) = with_job_fetch_dir();
    forget_tiny_everywhere(As::User);
    // a cold step over the 3 nodes, 12 tasks at once: the registry serves each blob once, to one node
    cold_step_fetches_each_blob_once(As::User, 12);
    // every node has the image now: a later job asks the registry for nothing
    let from = log_lines();
    sh(As::User, &format!("srun -N3 -n3 --container-image={REGISTRY}/md/tiny true")).success();
    assert!(blob_fetches(from).is_empty(), "{:?}", blob_fetches(from));
    // the jobs' ends removed what the nodes handed each other
    assert_clean_within(60);
    assert!(wait_for(30, || job_fetch_left(&dir).trim().is_empty()), "left: {}", job_fetch_left(&dir));
    forget_tiny_everywhere(As::User);
}

#[test]
fn a_one_node_job_pulls_without_handing_the_image_on() {
    let _g = exclusive();
    let (_site, dir) = with_job_fetch_dir();
    forget_tiny_everywhere(As::User);
    let run = sbatch(
        As::User,
        "-N1 -n1 -t 5",
        &format!(
            "srun --container-image={REGISTRY}/md/tiny sh -c 'echo $MD_IMAGE_FLAVOUR'; \
             test -e {dir}/u$(id -u)/job-$SLURM_JOB_ID && echo handed-on || echo pulled-only"
        ),
    );
    let lines = run.lines();
    assert!(lines.iter().any(|l| l == "tiny"), "{run}");
    // nobody else could load it: no file written for the job's other nodes, no lease taken
    assert!(lines.iter().any(|l| l == "pulled-only"), "{run}");
    assert_clean_within(60);
    forget_tiny_everywhere(As::User);
}

#[test]
fn the_jobs_end_removes_its_fetch_directory_after_the_site_dropped_the_setting() {
    let _g = exclusive();
    let (site, dir) = with_job_fetch_dir();
    forget_tiny_everywhere(As::User);
    // the admin takes job_fetch_dir out of the site's file while the job runs, after its nodes used it
    let watch = dir.clone();
    let admin = std::thread::spawn(move || {
        let used = wait_for(60, || !job_fetch_left(&watch).trim().is_empty());
        drop(site);
        used
    });
    let run = sbatch(
        As::User,
        "-N3 -n3 -t 5",
        &format!("srun -N3 -n3 --container-image={REGISTRY}/md/tiny true; echo step=$?; sleep 5"),
    );
    assert!(admin.join().expect("the admin thread"), "the job's nodes never used the directory: {run}");
    assert!(run.lines().iter().any(|l| l == "step=0"), "{run}");
    // each node's end of the job found the directory where its helper noted it
    assert!(wait_for(30, || job_fetch_left(&dir).trim().is_empty()), "left: {}", job_fetch_left(&dir));
    assert_clean_within(60);
    forget_tiny_everywhere(As::User);
}

#[test]
fn the_job_fetch_goes_on_when_the_fetching_nodes_helper_is_killed() {
    let _g = exclusive();
    let (_site, dir) = with_job_fetch_dir();
    forget_tiny_everywhere(As::User);
    // the fetching node's helper stops once it holds the job's lease; the test kills it there (a
    // helper killed there leaves its marker: none is left from an earlier run)
    const MARKER: &str = "/run/mpiexec-docker/*/fault-hand-on";
    for node in NODES {
        on_node(node, As::Root, &format!("rm -f {MARKER}")).success();
    }
    let killer = std::thread::spawn(|| {
        let mut killed = None;
        let found = wait_for(90, || {
            for node in NODES {
                let pid = on_node(node, As::Root, &format!("cat {MARKER} 2>/dev/null")).stdout;
                if !pid.trim().is_empty() {
                    on_node(node, As::Root, &format!("kill -9 {} && rm -f {MARKER}", pid.trim())).success();
                    killed = Some(node);
                    return true;
                }
            }
            false
        });
        assert!(found, "no node reached the hand-on phase");
        killed
    });
    let run = sbatch(
        As::User,
        "-N3 -n3 -t 10",
        &format!(
            "srun -N3 -n3 --export=ALL,MPIEXEC_DOCKER_FAULT_WAIT=hand-on --container-image={REGISTRY}/md/tiny true; echo first=$?; \
             srun -N3 -n3 --container-image={REGISTRY}/md/tiny sh -c 'echo $MD_IMAGE_FLAVOUR'; echo second=$?"
        ),
    );
    let killed = killer.join().expect("the killer thread");
    assert!(killed.is_some());
    let lines = run.lines();
    // the first step fails with one line; the second finds the dead fetcher's lease, takes it over
    // after it went stale, and runs on every node
    assert!(lines.iter().any(|l| l.starts_with("first=") && l != "first=0"), "{run}");
    let ours: Vec<&String> = lines.iter().filter(|l| l.contains("mpiexec_docker: ")).collect();
    assert_eq!(ours.len(), 1, "one line of ours: {run}");
    assert!(ours[0].contains("the helper was killed (SIGKILL)"), "{run}");
    assert!(lines.iter().any(|l| l == "second=0"), "{run}");
    assert_eq!(lines.iter().filter(|l| *l == "tiny").count(), 3, "{run}");
    assert_clean_within(60);
    assert!(wait_for(30, || job_fetch_left(&dir).trim().is_empty()), "left: {}", job_fetch_left(&dir));
    forget_tiny_everywhere(As::User);
}
