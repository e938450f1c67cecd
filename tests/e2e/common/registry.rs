//! The test cluster's registry (Debian's docker-registry on the cluster network, serving `md/tiny`)
//! and its access log, and the site's `job_fetch_dir`: what the image-distribution tests of each
//! engine read.

use super::*;

/// The registry's address on the cluster network.
pub const REGISTRY: &str = "10.77.0.1:5000";
/// Its access log (one line per request, the client's address first).
pub const REGISTRY_LOG: &str = "/var/log/mdt-registry.log";

/// What each node fetched from the registry since `from` lines of its log: (node ip, blob) → count.
pub fn blob_fetches(from: usize) -> std::collections::BTreeMap<(String, String), usize> {
    let log = std::fs::read_to_string(REGISTRY_LOG).unwrap_or_default();
    let mut seen = std::collections::BTreeMap::new();
    for line in log.lines().skip(from) {
        // access log: IP - - [date] "GET /v2/NAME/blobs/sha256:… HTTP/1.1" 200 …
        let mut words = line.split_whitespace();
        let ip = words.next().unwrap_or("").to_string();
        let Some(req) = line.split('"').nth(1) else { continue };
        let mut r = req.split_whitespace();
        if r.next() != Some("GET") {
            continue;
        }
        let path = r.next().unwrap_or("");
        if path.starts_with("/v2/md/tiny/blobs/") && line.contains("\" 200 ") {
            *seen.entry((ip, path.to_string())).or_insert(0) += 1;
        }
    }
    seen
}

pub fn log_lines() -> usize {
    std::fs::read_to_string(REGISTRY_LOG).map(|l| l.lines().count()).unwrap_or(0)
}

/// The site's `job_fetch_dir` (a directory every node sees, made like /tmp) set until dropped.
pub fn with_job_fetch_dir() -> (Restore, String) {
    const SITE: &str = "/etc/mpiexec-docker/config.yaml";
    let site = Restore(SITE, std::fs::read(SITE).ok());
    let dir = format!("{SHARED}/job-fetch");
    sh(As::Root, &format!("install -d -m 1777 {dir} && printf 'job_fetch_dir: {dir}\\n' >> {SITE}")).success();
    (site, dir)
}

/// What the job fetch directory holds of the test user (their jobs' directories and files).
pub fn job_fetch_left(dir: &str) -> String {
    sh(As::Root, &format!("find {dir} -mindepth 2 2>/dev/null | sort")).stdout
}

/// A cold `srun -N3 -nTASKS --container-image=REGISTRY/md/tiny` of `who` (with the site's
/// `job_fetch_dir` set): its tasks run on the 3 nodes, and the registry served each blob of the image
/// once for the job, to one node.
pub fn cold_step_fetches_each_blob_once(who: As, tasks: usize) {
    let from = log_lines();
    let run = sh(
        who,
        &format!("srun -N3 -n{tasks} --container-image={REGISTRY}/md/tiny sh -c 'echo $(hostname) $MD_IMAGE_FLAVOUR'"),
    )
    .success();
    assert_eq!(run.lines().iter().filter(|l| l.ends_with(" tiny")).count(), tasks, "{run}");
    let nodes: std::collections::BTreeSet<String> =
        run.lines().iter().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
    assert_eq!(nodes.len(), 3, "tasks ran on the 3 nodes: {run}");
    let fetched = blob_fetches(from);
    assert!(!fetched.is_empty(), "the image came from the registry");
    let mut per_blob = std::collections::BTreeMap::new();
    for ((_, blob), n) in &fetched {
        *per_blob.entry(blob.clone()).or_insert(0) += n;
    }
    assert!(per_blob.values().all(|&n| n == 1), "each blob once per job: {fetched:?}");
    let fetchers: std::collections::BTreeSet<&String> = fetched.keys().map(|(ip, _)| ip).collect();
    assert_eq!(fetchers.len(), 1, "one node fetched: {fetched:?}");
}
