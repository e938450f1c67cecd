//! The container's confinement for tasks that join it: the same seccomp filter, capability bounding
//! set and `no_new_privs` as the step container's own process.
//!
//! A task enters the step container by joining its namespaces (see [`crate::step_join`]); that gives
//! it the container's files, not what the engine's runtime (crun, runc) applied to the container's
//! process: its seccomp filter (the engine's default profile, or the site's) and its capability
//! bounding set. Without them a task would be less confined than the same program under `podman run`.
//!
//! The filter is not rebuilt from a profile (which one the engine used, with which capabilities and
//! architectures, is the engine's business): it is copied from the container's process itself, as
//! the kernel holds it, with `PTRACE_SECCOMP_GET_FILTER` (root only, so the plugin reads it in
//! `slurm_spank_task_init_privileged`). Each task then installs the same BPF programs in the same
//! order, and drops from its bounding set what the container's process lacks, as the very last thing
//! before its program starts ([`Confinement::apply`]): after it, only `execve` of the program follows.

use std::fmt;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfinementError {
    #[error("cannot read the confinement of the container's process {pid}: {reason}")]
    Read { pid: i32, reason: String },
    #[error("cannot confine the task like its container ({what}): {source}")]
    Apply { what: &'static str, source: std::io::Error },
    #[error("bad confinement description: {0}")]
    Parse(String),
}

/// `ptrace` request that copies a tracee's seccomp filter (Linux 4.4; not in every libc binding).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// `prctl(PR_SET_NO_NEW_PRIVS)`: no exec from here on gains privilege (setuid, file capabilities).
pub fn no_new_privileges() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the engine gave the container's process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confinement {
    /// The seccomp filters, in the order they were installed (the first is applied first).
    pub filters: Vec<Vec<libc::sock_filter>>,
    /// `CapBnd` of the container's process.
    pub cap_bounding: u64,
    /// `NoNewPrivs` of the container's process.
    pub no_new_privs: bool,
}

impl fmt::Display for Confinement {
    /// One line for the step's log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let instructions: usize = self.filters.iter().map(Vec::len).sum();
        match self.filters.len() {
            0 => write!(f, "no seccomp filter")?,
            n => write!(f, "seccomp filter ({n} program(s), {instructions} instructions)")?,
        }
        write!(f, ", capability bounding set {:016x}, no_new_privs {}", self.cap_bounding, self.no_new_privs as u8)
    }
}

/// `CAP_DAC_OVERRIDE` (linux/capability.h).
const CAP_DAC_OVERRIDE: u32 = 1;

/// Puts `cap` into this thread's inheritable and ambient sets, so that it stays through the exec
/// of a program of a non-root user. Needs `cap` in the permitted set (else `EPERM`).
fn raise_ambient(cap: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data words, as the kernel expects.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        if data[word].permitted & bit == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        data[word].inheritable |= bit;
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, cap as libc::c_ulong, 0, 0)
            != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The `Name:\tvalue` fields of a `/proc/PID/status` text.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

impl Confinement {
    /// Reads the confinement of process `pid`: its status fields, and its seccomp filters through
    /// ptrace (the process stops for the microseconds that takes). Needs root.
    pub fn of_process(pid: i32) -> Result<Confinement, ConfinementError> {
        let read = |reason: String| ConfinementError::Read { pid, reason };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| read(e.to_string()))?;
        let (cap_bounding, no_new_privs, seccomp) = Self::parse_status(&status).map_err(read)?;
        let filters = match seccomp {
            0 => Vec::new(),
            2 => read_filters(pid).map_err(read)?,
            mode => return Err(read(format!("seccomp mode {mode} cannot be copied"))),
        };
        Ok(Confinement { filters, cap_bounding, no_new_privs })
    }

    /// `CapBnd`, `NoNewPrivs` and `Seccomp` of a `/proc/PID/status` text.
    pub fn parse_status(status: &str) -> Result<(u64, bool, u32), String> {
        let field = |name| status_field(status, name).ok_or_else(|| format!("no {name} in its status"));
        let cap = u64::from_str_radix(field("CapBnd")?, 16).map_err(|e| format!("CapBnd: {e}"))?;
        let nnp = field("NoNewPrivs")? == "1";
        let seccomp = field("Seccomp")?.parse().map_err(|e| format!("Seccomp: {e}"))?;
        Ok((cap, nnp, seccomp))
    }

    /// Applies the confinement to this process: bounding set, `no_new_privs`, then the filters. The
    /// caller must be single-threaded and about to exec the task's program, with `CAP_SETPCAP` (and,
    /// without `no_new_privs`, `CAP_SYS_ADMIN`) in its user namespace, which a task has as root or
    /// right after joining the container's user namespace.
    pub fn apply(&self) -> Result<(), ConfinementError> {
        // enroot unpacks an image as its user, so pyxis's tasks may read and run every file of it;
        // a task that joined the container's user namespace (rootless Podman keeps the user's uid
        // there) keeps the one capability that gives the same: file permission checks passed, which
        // counts only for files whose owners that namespace maps (the image's and the user's own,
        // never another user's: theirs are unmapped there), and only where the container's own
        // bounding set has it. Elsewhere (a task in the host's namespace) it cannot be raised.
        if self.cap_bounding & (1 << CAP_DAC_OVERRIDE) != 0 {
            let _ = raise_ambient(CAP_DAC_OVERRIDE);
        }
        self.drop_bounding()?;
        if self.no_new_privs {
            no_new_privileges().map_err(|source| ConfinementError::Apply { what: "no_new_privs", source })?;
        }
        for program in &self.filters {
            let prog =
                libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
            // SAFETY: a valid sock_fprog pointing at `program`, which outlives the call (the kernel
            // copies it).
            let rc = unsafe {
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog)
            };
            if rc != 0 {
                return Err(ConfinementError::Apply {
                    what: "install the seccomp filter",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// Drops from this process's bounding set every capability the container's process lacks.
    pub fn drop_bounding(&self) -> Result<(), ConfinementError> {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        for cap in 0..=last.min(63) {
            // SAFETY: prctl with integer arguments only.
            let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 1;
            if self.cap_bounding & (1 << cap) != 0 || !held {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                let err = std::io::Error::last_os_error();
                // a capability this kernel does not know is not in any bounding set
                if err.raw_os_error() != Some(libc::EINVAL) {
                    return Err(ConfinementError::Apply { what: "drop a bounding capability", source: err });
                }
            }
        }
        Ok(())
    }

    /// A one-word form for a command line (`step-container join --confinement WORD`):
    /// `CAPBND.NNP.PROGRAM.PROGRAM…`, each program as hex (8 bytes per instruction).
    pub fn to_word(&self) -> String {
        let mut word = format!("{:x}.{}", self.cap_bounding, self.no_new_privs as u8);
        for program in &self.filters {
            word.push('.');
            for ins in program {
                word.push_str(&format!("{:04x}{:02x}{:02x}{:08x}", ins.code, ins.jt, ins.jf, ins.k));
            }
        }
        word
    }

    pub fn from_word(word: &str) -> Result<Confinement, ConfinementError> {
        let bad = |what: &str| ConfinementError::Parse(what.to_string());
        let mut parts = word.split('.');
        let cap_bounding = u64::from_str_radix(parts.next().unwrap_or(""), 16).map_err(|_| bad("capabilities"))?;
        let no_new_privs = match parts.next() {
            Some("0") => false,
            Some("1") => true,
            _ => return Err(bad("no_new_privs")),
        };
        let mut filters = Vec::new();
        for hex in parts {
            if hex.is_empty() || hex.len() % 16 != 0 || !hex.is_ascii() {
                return Err(bad("seccomp program"));
            }
            let num = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad("seccomp instruction"));
            let mut program = Vec::with_capacity(hex.len() / 16);
            for i in (0..hex.len()).step_by(16) {
                let ins = &hex[i..i + 16];
                program.push(libc::sock_filter {
                    code: num(&ins[0..4])? as u16,
                    jt: num(&ins[4..6])? as u8,
                    jf: num(&ins[6..8])? as u8,
                    k: num(&ins[8..16])?,
                });
            }
            if program.len() > 4096 {
                return Err(bad("seccomp program longer than the kernel's limit"));
            }
            filters.push(program);
        }
        Ok(Confinement { filters, cap_bounding, no_new_privs })
    }
}

/// The seccomp programs of process `pid`, oldest first, read by attaching to it briefly. Another
/// tracer (a task of the same step doing the same at the same moment) makes the attach fail with
/// EPERM: it is tried again until a deadline.
fn read_filters(pid: i32) -> Result<Vec<Vec<libc::sock_filter>>, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: ptrace requests with integer arguments; the tracee is detached on every path below.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EPERM) || std::time::Instant::now() > deadline {
            return Err(format!("attach: {err}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let result = stopped_filters(pid);
    // SAFETY: we are its tracer (seized above).
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    result
}

fn stopped_filters(pid: i32) -> Result<Vec<Vec<libc::sock_filter>>, String> {
    // SAFETY: ptrace/waitpid on our own tracee.
    unsafe {
        if libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) != 0 {
            return Err(format!("interrupt: {}", std::io::Error::last_os_error()));
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, libc::__WALL) != pid {
            return Err(format!("wait: {}", std::io::Error::last_os_error()));
        }
    }
    let mut newest_first = Vec::new();
    for index in 0.. {
        // SAFETY: a null buffer asks for the program's length only.
        let len = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER as _,
                pid,
                index as libc::c_ulong,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if len < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(format!("read filter {index}: {err}"));
        }
        let mut program = vec![libc::sock_filter { code: 0, jt: 0, jf: 0, k: 0 }; len as usize];
        // SAFETY: `program` has room for the `len` instructions the kernel reported.
        let got =
            unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER as _, pid, index as libc::c_ulong, program.as_mut_ptr()) };
        if got != len {
            return Err(format!("read filter {index}: {}", std::io::Error::last_os_error()));
        }
        newest_first.push(program);
    }
    newest_first.reverse();
    Ok(newest_first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_of_a_container_process() {
        // /proc/PID/status of a rootless Podman container's process (trimmed)
        let status = "Name:\tmpiexec_docker\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n\
                      CapInh:\t0000000000000000\nCapBnd:\t00000000800405fb\n";
        assert_eq!(Confinement::parse_status(status).unwrap(), (0x800405fb, false, 2));
        assert!(Confinement::parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn a_confinement_survives_its_command_line_word() {
        let c = Confinement {
            filters: vec![
                vec![
                    libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: 4 },
                    libc::sock_filter { code: 6, jt: 1, jf: 2, k: 0x7fff0000 },
                ],
                vec![libc::sock_filter { code: 6, jt: 0, jf: 0, k: 0x50001 }],
            ],
            cap_bounding: 0x800405fb,
            no_new_privs: true,
        };
        let word = c.to_word();
        assert!(!word.contains(' '), "{word}");
        assert_eq!(Confinement::from_word(&word).unwrap(), c);
        assert_eq!(Confinement::from_word("ff.0").unwrap().filters.len(), 0);
        for bad in ["", "zz.0", "ff.2", "ff.0.abc", "ff.0.", "ff.1.00200000000000zz"] {
            assert!(Confinement::from_word(bad).is_err(), "{bad}");
        }
        assert!(c.to_string().contains("seccomp filter (2 program(s), 3 instructions)"), "{c}");
    }

    #[test]
    fn a_process_without_a_filter_has_none_to_copy() {
        // this test process: no seccomp filter under cargo test (reading its own status needs no root)
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let (_, _, mode) = Confinement::parse_status(&status).unwrap();
        if mode == 0 {
            let c = Confinement::of_process(std::process::id() as i32).unwrap();
            assert!(c.filters.is_empty());
        }
    }
}
