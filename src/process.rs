//! Running a child while forwarding the signals we receive to it, and reporting its end as a shell
//! would: its exit code, or 128+N when signal N killed it.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// The signals a launcher passes on to what it launched (Slurm sends SIGTERM/SIGKILL at scancel, and
/// SIGCONT/SIGTERM at time limits; users send SIGINT/SIGQUIT; applications use SIGUSR1/2).
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

/// Marks every descriptor from 3 up close-on-exec, so that a program run next inherits only its
/// standard streams (and what the caller clears the flag of afterwards). For `pre_exec`: only
/// async-signal-safe calls.
pub fn no_inherited_fds() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range(2) with the CLOEXEC flag only changes descriptor flags.
    let done =
        unsafe { libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
    if done == 0 {
        return;
    }
    // an older kernel: one descriptor at a time, up to the limit
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) into a local; fcntl(2) on numbers, harmless on closed ones.
    unsafe {
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 { limit.rlim_cur.min(65536) } else { 1024 };
        for fd in 3..max as i32 {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The shell's convention for an exit status.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// A running child whose signals are forwarded.
pub struct Supervised {
    pub child: Child,
    /// The last signal received and forwarded (0: none).
    pub last_signal: Arc<AtomicI32>,
    done: Arc<AtomicBool>,
}

/// Signals that end a job (scancel, time limit, Ctrl-C, hang-up).
fn terminating(sig: Signal) -> bool {
    matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT)
}

/// How long the child gets to end by itself after a terminating signal before `on_terminate` runs.
pub const GRACE: Duration = Duration::from_millis(1500);

/// Starts `cmd` with the forwarded signals blocked in this process and passed on to the child by a
/// dedicated thread. (std's spawn resets the child's signal mask, so the child sees them normally.)
///
/// After a terminating signal, when the child has not ended within [`GRACE`], `on_terminate` runs once
/// on that thread: Slurm follows SIGTERM with SIGKILL after `KillWait`, so cleanup that must happen
/// (removing a container whose engine client may already be gone) cannot wait for the child.
pub fn spawn_forwarding(cmd: &mut Command, on_terminate: Option<Box<dyn FnOnce() + Send>>) -> io::Result<Supervised> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block().map_err(io::Error::from)?;
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    let last_signal = Arc::new(AtomicI32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (last, finished) = (last_signal.clone(), done.clone());
    let mut on_terminate = on_terminate;
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        if let Ok(sig) = set.wait() {
            if sig != Signal::SIGCONT {
                last.store(sig as i32, Ordering::SeqCst);
            }
            // the child may be gone already: nothing to do then
            let _ = kill(pid, sig);
            if terminating(sig) {
                if let Some(cleanup) = on_terminate.take() {
                    let until = Instant::now() + GRACE;
                    while !finished.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if !finished.load(Ordering::SeqCst) {
                        cleanup();
                    }
                }
            }
        }
    })?;
    Ok(Supervised { child, last_signal, done })
}

impl Supervised {
    /// Waits for the child; returns its shell-style exit code.
    pub fn wait(&mut self) -> io::Result<i32> {
        let status = self.child.wait();
        self.done.store(true, Ordering::SeqCst);
        Ok(exit_code(status?))
    }

    /// The terminating signal received while the child ran, if any.
    pub fn interrupted_by(&self) -> Option<i32> {
        match self.last_signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_like_a_shell() {
        let st = Command::new("sh").args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(exit_code(st), 7);
        let st = Command::new("sh").args(["-c", "kill -TERM $$"]).status().unwrap();
        assert_eq!(exit_code(st), 128 + 15);
    }
}

/// A process named by a pidfd: signals and waits reach that very process, never a later one that
/// reuses its id.
#[derive(Debug)]
pub struct ProcessHandle {
    fd: std::os::fd::OwnedFd,
}

impl ProcessHandle {
    /// `None` when there is no such process (or the kernel has no pidfds).
    pub fn open(pid: i32) -> Option<ProcessHandle> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a descriptor just returned to us, owned by nothing else.
        (fd >= 0).then(|| ProcessHandle { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) } })
    }

    pub fn kill(&self, signal: Signal) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal with our descriptor, a signal number and no siginfo.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), signal as i32, 0usize, 0) };
    }

    /// Whether the process still runs. A check of `/proc/PID` made after [`ProcessHandle::open`] and
    /// before this answers `true` was a check of this very process (its pid cannot be reused while
    /// it lives).
    pub fn alive(&self) -> bool {
        !self.wait(Some(Duration::ZERO))
    }

    /// Waits until the process ends, at most `limit` (`None`: for ever); whether it ended.
    pub fn wait(&self, limit: Option<Duration>) -> bool {
        use std::os::fd::AsRawFd;
        let timeout = limit.map(|d| d.as_millis().min(i32::MAX as u128) as i32).unwrap_or(-1);
        let mut fds = [libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        loop {
            // SAFETY: one valid pollfd for the duration of the call.
            match unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout) } {
                n if n > 0 => return true,
                0 => return false,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
                _ => return false,
            }
        }
    }
}

#[cfg(test)]
mod handle_tests {
    use super::*;

    #[test]
    fn a_handle_kills_and_waits_for_its_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let h = ProcessHandle::open(child.id() as i32).expect("a live process");
        assert!(!h.wait(Some(Duration::from_millis(50))), "still running");
        h.kill(Signal::SIGKILL);
        let _ = child.wait();
        assert!(h.wait(Some(Duration::from_secs(5))), "ended");
        assert!(ProcessHandle::open(i32::MAX).is_none());
    }
}
