//! Places where a fault can be made to happen on purpose, for the fault tests (`tests/e2e/faults.rs`,
//! issue 19): with `MPIEXEC_DOCKER_FAULT_WAIT=PHASE` in the step's environment, the helper stops
//! where PHASE begins, says so in a file `fault-PHASE` of its state directory (its pid), and goes on
//! once that file is gone, or after [`FAULT_WAIT_LIMIT`] at most. Meanwhile a test kills the helper,
//! the engine or the registry, fills a disk, restarts a daemon.
//!
//! A user can only stall their own step with it, within the limit, and every wait of slurmstepd on
//! the helper has its own deadline anyway.

use std::time::{Duration, Instant};

/// The variable naming the phase to stop at.
pub const FAULT_WAIT_VAR: &str = "MPIEXEC_DOCKER_FAULT_WAIT";

/// The longest the helper waits at a fault point.
pub const FAULT_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// The phases a start or stop may be stopped at, in their order (`hand-on`: the node that fetches
/// an image for the job's other nodes, holding the lease; see [`crate::job_fetch`]).
pub const PHASES: &[&str] = &["lock", "fetch", "hand-on", "run", "cgroup", "relay", "stop"];

/// Where a step start or stop reaches `phase`: waits there when asked to (see the module docs).
pub fn reached(phase: &str) {
    if std::env::var(FAULT_WAIT_VAR).ok().as_deref() != Some(phase) || !PHASES.contains(&phase) {
        return;
    }
    let Ok(base) = crate::runtime_dir::user_base() else { return };
    let marker = base.join(format!("fault-{phase}"));
    if std::fs::write(&marker, std::process::id().to_string()).is_err() {
        return;
    }
    let start = Instant::now();
    while marker.exists() && start.elapsed() < FAULT_WAIT_LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&marker);
}
