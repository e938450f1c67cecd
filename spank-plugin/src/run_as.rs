//! Running the helper as the job's user, from any context: slurmstepd (`user_init` runs with the
//! user's effective ids, `exit` as root) or slurmd's epilog (root).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The site's configuration file (plugstack `config=`), which the helper is told of.
fn site_config(cmd: &mut Command) {
    if let Ok(args) = crate::state::plugin_args() {
        cmd.env(mpiexec_docker_core::config::ENV_SITE_CONFIG, &args.config);
    }
}

/// `helper` as `user` with group `gid`, with a clean environment of theirs: their ids for real, and,
/// when we are root, their supplementary groups instead of ours.
pub fn helper_as(helper: &std::path::Path, user: &nix::unistd::User, gid: u32) -> Command {
    // the groups are looked up before fork: reading /etc/group is not async-signal-safe
    let ids = user_ids(user, gid);
    let mut cmd = Command::new(helper);
    cmd.env_clear()
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null());
    site_config(&mut cmd);
    isolate(&mut cmd);
    if ids.uid != 0 {
        ids.become_in_child(&mut cmd);
    }
    cmd
}

/// What the helper never inherits from slurmstepd or slurmd: their descriptors (marked close-on-exec),
/// the job's umask and working directory (`022`, `/`).
fn isolate(cmd: &mut Command) {
    cmd.current_dir("/");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            mpiexec_docker_core::process::no_inherited_fds();
            Ok(())
        });
    }
}

/// `helper` as root with a clean environment, from any context: `user_init` runs with the job user's
/// effective ids but root's real and saved ones, which the child takes back. For engines whose daemon
/// only root may use (Docker): the helper then acts for the user it is given (`--user`).
pub fn helper_as_root(helper: &std::path::Path) -> Command {
    let mut cmd = Command::new(helper);
    cmd.env_clear()
        .env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null());
    site_config(&mut cmd);
    isolate(&mut cmd);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let root: libc::gid_t = 0;
            if libc::setresuid(0, 0, 0) != 0
                || libc::setresgid(0, 0, 0) != 0
                || libc::setgroups(1, &root as *const libc::gid_t) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The job user's ids as the helper's `--user` takes them: uid, gid and supplementary groups.
pub fn user_ids(user: &nix::unistd::User, gid: u32) -> mpiexec_docker_core::identity::UserIds {
    let groups = std::ffi::CString::new(user.name.clone())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok())
        .map(|g| g.into_iter().map(|g| g.as_raw()).filter(|&g| g != gid).collect())
        .unwrap_or_default();
    mpiexec_docker_core::identity::UserIds { uid: user.uid.as_raw(), gid, groups }
}
