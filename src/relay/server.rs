//! The host end of the relay: a Unix socket in the run's private directory (0700), served by a thread
//! of `mpiexec_docker` for the container's lifetime.
//!
//! Each connection is checked before anything is read: the peer must be this user (`SO_PEERCRED`) and
//! live in another mount namespace than ours (inside the container, not a process beside us on the
//! host). The request's command must be relayable; it is resolved on the host's `PATH` (the host's
//! srun may live anywhere), rewritten ([`super::rewrite`]), and run with the client's own stdin,
//! stdout and stderr. Nothing is interpreted by a shell on this side.

use std::ffi::OsString;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Pid;

use super::protocol::{recv_message, recv_request, send_message, Message, Request};
use super::rewrite::{relayable, rewrite_srun, rewrite_ssh};
use crate::engine::which;
use crate::environment::EnvFilter;
use crate::layout::{ENV_IMAGE, ENV_IN_CONTAINER, HOST_DIR};
use crate::process::exit_code;

/// What the server needs to run relayed commands.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Commands that may be relayed (`srun`, `ssh`, `rsh`).
    pub allowed: Vec<String>,
    /// `run_in_docker [OPTS] IMAGE --`: what goes before the remote program.
    pub wrap: Vec<String>,
    /// Whether srun's remote program is wrapped too. Not in a SPANK step container: the host's srun
    /// inherits the job's `--container-image` (Slurm's `SLURM_SPANK__…` variables) and the plugin
    /// puts the new step's tasks into the image itself.
    pub wrap_srun: bool,
    /// The host directory mounted at `/host`, or, when [`RelayConfig::same_paths`], the directory
    /// to fall back to.
    pub host_dir: PathBuf,
    /// The container sees the host's directories at their own paths (a SPANK step container).
    pub same_paths: bool,
    /// The host's PATH, to find the real srun/ssh.
    pub host_path: OsString,
    /// Which of the client's variables reach the host command (on top of the host's own).
    pub env_filter: EnvFilter,
}

/// Binds the socket at `path` (mode 0600) and serves it on a background thread.
pub fn start(path: &Path, config: RelayConfig) -> std::io::Result<()> {
    serve_on(bind(path)?, config)
}

/// Binds the relay's socket at `path` (mode 0600, owned by the caller's effective user). A socket
/// bound before the container starts is there for the container's first process: nothing inside
/// ever finds the relay missing, however slowly the server that later serves it starts.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves a bound relay socket on a background thread (connections wait in the socket's backlog
/// until then).
pub fn serve_on(listener: UnixListener, config: RelayConfig) -> std::io::Result<()> {
    let config = Arc::new(config);
    std::thread::Builder::new().name("relay".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let config = config.clone();
            let _ = std::thread::Builder::new().name("relay-conn".into()).spawn(move || serve(conn, &config));
        }
    })?;
    Ok(())
}

/// Why a peer may not use the relay, if it may not.
pub fn check_peer(sock: &UnixStream) -> Result<(), String> {
    let cred = getsockopt(sock, PeerCredentials).map_err(|e| format!("cannot identify the caller: {e}"))?;
    let me = nix::unistd::getuid().as_raw();
    if cred.uid() != me {
        return Err(format!("uid {} may not use the relay of uid {me}", cred.uid()));
    }
    let ours = std::fs::read_link("/proc/self/ns/mnt").map_err(|e| e.to_string())?;
    let theirs = std::fs::read_link(format!("/proc/{}/ns/mnt", cred.pid()))
        .map_err(|e| format!("cannot inspect the caller (pid {}): {e}", cred.pid()))?;
    if theirs == ours {
        return Err("only processes inside the container may use the relay".into());
    }
    Ok(())
}

fn serve(sock: UnixStream, config: &RelayConfig) {
    if let Err(why) = check_peer(&sock) {
        log::warn!("relay: refused a connection: {why}");
        let _ = send_message(&sock, &Message::Error(format!("relay refused: {why}")));
        return;
    }
    let (req, fds) = match recv_request(&sock) {
        Ok(r) => r,
        Err(e) => {
            let _ = send_message(&sock, &Message::Error(e.to_string()));
            return;
        }
    };
    match run(&sock, &req, fds, config) {
        Ok(code) => {
            let _ = send_message(&sock, &Message::Exit(code));
        }
        Err(text) => {
            let _ = send_message(&sock, &Message::Error(text));
        }
    }
}

/// The host command line for a request: (program, arguments).
pub fn host_command(req: &Request, config: &RelayConfig) -> Result<(PathBuf, Vec<String>), String> {
    let name = relayable(&req.argv[0], &config.allowed).map_err(|e| e.to_string())?;
    let program = which(name, &config.host_path).ok_or_else(|| {
        format!("{name} is not installed on this host (searched PATH={})", config.host_path.to_string_lossy())
    })?;
    let args = &req.argv[1..];
    let args = match name {
        "srun" if config.wrap_srun => rewrite_srun(args, &config.wrap),
        "ssh" | "rsh" => rewrite_ssh(args, &config.wrap),
        _ => args.to_vec(),
    };
    Ok((program, args))
}

/// Maps the container's working directory to the host's: `/host/x` → `HOST_DIR/x`.
pub fn host_cwd(container_cwd: &str, host_dir: &Path) -> PathBuf {
    match Path::new(container_cwd).strip_prefix(HOST_DIR) {
        Ok(rest) => host_dir.join(rest),
        Err(_) => host_dir.to_path_buf(),
    }
}

fn run(sock: &UnixStream, req: &Request, fds: Vec<std::os::fd::OwnedFd>, config: &RelayConfig) -> Result<i32, String> {
    let (program, args) = host_command(req, config)?;
    let mut cmd = Command::new(&program);
    let cwd = match config.same_paths {
        true if Path::new(&req.cwd).is_dir() => PathBuf::from(&req.cwd),
        true => config.host_dir.clone(),
        false => host_cwd(&req.cwd, &config.host_dir),
    };
    // PWD as a shell sets it: srun passes it on as the step's working directory
    cmd.args(&args).current_dir(&cwd).env("PWD", &cwd);
    for (k, v) in &req.env {
        if k == "PWD" {
            continue;
        }
        // the markers of our containers stay inside: the host command is outside
        if k == ENV_IN_CONTAINER || k == ENV_IMAGE {
            continue;
        }
        if config.env_filter.passes(k) {
            cmd.env(k, v);
        }
    }
    let mut fds = fds.into_iter();
    let mut stdio = || fds.next().map(Stdio::from).unwrap_or_else(Stdio::null);
    cmd.stdin(stdio()).stdout(stdio()).stderr(stdio());
    log::debug!("relay: {cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let reader = sock.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        while let Ok(Some(Message::Signal(n))) = recv_message(&reader) {
            if let Ok(sig) = Signal::try_from(n) {
                let _ = kill(pid, sig);
            }
        }
    });
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok(exit_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RelayConfig {
        RelayConfig {
            allowed: vec!["srun".into(), "ssh".into()],
            wrap: vec!["/opt/md/run_in_docker".into(), "img".into(), "--".into()],
            wrap_srun: true,
            host_dir: "/home/u/run".into(),
            same_paths: false,
            host_path: "/usr/sbin:/usr/bin:/bin".into(),
            env_filter: EnvFilter::default(),
        }
    }

    #[test]
    fn working_directory_maps_back() {
        assert_eq!(host_cwd("/host/sub/dir", Path::new("/home/u/run")), PathBuf::from("/home/u/run/sub/dir"));
        assert_eq!(host_cwd("/host", Path::new("/home/u/run")), PathBuf::from("/home/u/run"));
        assert_eq!(host_cwd("/tmp", Path::new("/home/u/run")), PathBuf::from("/home/u/run"));
    }

    #[test]
    fn srun_in_a_step_container_is_left_to_the_plugin() {
        let req = Request { argv: vec!["srun".into(), "-n2".into(), "orted".into()], env: vec![], cwd: "/w".into() };
        let (_, args) = host_command(&req, &config()).unwrap();
        assert_eq!(args, ["-n2", "/opt/md/run_in_docker", "img", "--", "orted"]);
        let plugin = RelayConfig { wrap_srun: false, ..config() };
        let (_, args) = host_command(&req, &plugin).unwrap();
        assert_eq!(args, ["-n2", "orted"]);
        let ssh = Request { argv: vec!["ssh".into(), "n2".into(), "orted -x".into()], env: vec![], cwd: "/w".into() };
        let (_, args) = host_command(&ssh, &plugin).unwrap();
        assert!(args.iter().any(|a| a.contains("run_in_docker")), "{args:?}");
    }

    #[test]
    fn refuses_what_is_not_relayable() {
        let req =
            Request { argv: vec!["/.mpiexec-docker/bin/rm".into(), "-rf".into()], env: vec![], cwd: "/host".into() };
        let err = host_command(&req, &config()).unwrap_err();
        assert!(err.contains("'rm' may not be relayed"), "{err}");
    }

    #[test]
    fn peers_in_our_own_mount_namespace_are_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let err = check_peer(&a).unwrap_err();
        assert!(err.contains("only processes inside the container"), "{err}");
    }
}
