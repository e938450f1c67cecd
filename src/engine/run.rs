//! Every engine call bounded in time: the command runs in a process group of its own, killed whole
//! at the deadline.

use std::process::{Command, Stdio};
use std::time::Duration;

/// The longest a quick engine call (inspect, list, remove) may take.
pub const QUICK_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion, capturing its output, but kills it after `limit`: a Podman wedged on a
/// lock must not wedge Slurm's step setup with it. The command runs in a process group of its own,
/// and the whole group is killed: what it started goes too, and nothing it left holding the output
/// pipes can make this wait past the deadline.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<std::process::Output> {
    cmd.stdin(Stdio::null());
    Ok(output_within_feeding(cmd, limit, |_| Ok(()))?.output)
}

/// What [`output_within_feeding`] returns: the output, and how feeding the standard input went
/// (`None` when the command had none to feed).
pub struct Fed {
    pub output: std::process::Output,
    pub fed: Option<Result<(), String>>,
}

/// [`output_within`], with `feed` writing the command's standard input (when `cmd` has it piped) on
/// a thread of its own; the pipe is closed when `feed` returns.
pub fn output_within_feeding(
    cmd: &mut Command,
    limit: Duration,
    feed: impl FnOnce(&mut std::process::ChildStdin) -> Result<(), String> + Send + 'static,
) -> std::io::Result<Fed> {
    run_within(cmd.stdout(Stdio::piped()), limit, feed)
}

/// [`output_within`] with the command's standard output going into `out` (a file), not captured:
/// its status and standard error.
pub fn output_into_within(cmd: &mut Command, limit: Duration, out: std::fs::File) -> std::io::Result<Fed> {
    run_within(cmd.stdin(Stdio::null()).stdout(out), limit, |_| Ok(()))
}

/// The bounded run behind the functions above: standard error captured, standard output captured
/// when `cmd` has it piped (else where `cmd` sends it), `feed` writing a piped standard input.
fn run_within(
    cmd: &mut Command,
    limit: Duration,
    feed: impl FnOnce(&mut std::process::ChildStdin) -> Result<(), String> + Send + 'static,
) -> std::io::Result<Fed> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    let mut child = cmd.stderr(Stdio::piped()).process_group(0).spawn()?;
    let pgid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>();
    for (which, pipe) in [
        (1u8, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        (2, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            let _ = tx.send((which, v));
        });
    }
    drop(tx);
    let feeder = child.stdin.take().map(|mut stdin| {
        let (ftx, frx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = feed(&mut stdin);
            drop(stdin);
            let _ = ftx.send(r);
        });
        frx
    });
    let start = std::time::Instant::now();
    let kill = |child: &mut std::process::Child| {
        // SAFETY: kill(2) of the process group we made for the child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    };
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > limit {
            kill(&mut child);
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // the output pipes: until whatever else holds them lets go, within what is left of the deadline
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let left = limit.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
        match rx.recv_timeout(left) {
            Ok((1, v)) => stdout = v,
            Ok((_, v)) => stderr = v,
            Err(_) => {
                // SAFETY: as above; whatever of the group is left goes.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                break;
            }
        }
    }
    let fed = feeder
        .map(|f| f.recv_timeout(Duration::from_secs(1)).unwrap_or_else(|_| Err("the command stopped reading".into())));
    Ok(Fed { output: std::process::Output { status, stdout, stderr }, fed })
}
