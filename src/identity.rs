//! Whose container it is: the job user's ids, and acting as that user from a root process.
//!
//! With a root daemon (Docker) only root may start containers, so the SPANK plugin runs the helper as
//! root for the job. Everything the user names (image files, mounts, the working directory) must
//! then be checked with the user's rights, not root's: [`UserIds::act_as`] switches the effective ids
//! to the user's for a scope, and [`UserIds::become_in_child`] makes a child process the user for
//! good (the step's relay server, which runs `srun` on the user's behalf).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A user's uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (without the primary one).
    pub groups: Vec<u32>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("'{0}' is not UID:GID[:GROUP,...] (numbers)")]
    Syntax(String),
    #[error("cannot act as uid {uid}: {source}")]
    Switch { uid: u32, source: nix::Error },
}

impl UserIds {
    /// The calling process's real ids.
    pub fn of_caller() -> UserIds {
        let gid = nix::unistd::getgid().as_raw();
        let groups = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).filter(|&g| g != gid).collect())
            .unwrap_or_default();
        UserIds { uid: nix::unistd::getuid().as_raw(), gid, groups }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Switches this process's effective ids (and groups) to the user's until the guard is dropped.
    /// Only root can; for anyone else acting as themselves this is a no-op.
    pub fn act_as(&self) -> Result<ActingAs, IdentityError> {
        use nix::unistd::{setegid, seteuid, setgroups, Gid, Uid};
        if !nix::unistd::geteuid().is_root() || self.uid == 0 {
            return Ok(ActingAs { saved: None });
        }
        let err = |source| IdentityError::Switch { uid: self.uid, source };
        let saved_groups = nix::unistd::getgroups().map_err(err)?;
        let saved = (nix::unistd::geteuid(), nix::unistd::getegid(), saved_groups);
        let mut groups: Vec<Gid> = vec![Gid::from_raw(self.gid)];
        groups.extend(self.groups.iter().map(|&g| Gid::from_raw(g)));
        setgroups(&groups).map_err(err)?;
        let guard = ActingAs { saved: Some(saved) };
        setegid(Gid::from_raw(self.gid)).map_err(err)?;
        seteuid(Uid::from_raw(self.uid)).map_err(err)?;
        Ok(guard)
    }

    /// Makes the child of `cmd` this user for good (all ids, and its groups) before it runs.
    pub fn become_in_child(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = (self.uid, self.gid);
        let mut groups: Vec<libc::gid_t> = vec![gid];
        groups.extend(self.groups.iter().copied());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::geteuid() == 0 && libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setresgid(gid, gid, gid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// The scope of [`UserIds::act_as`]: root's ids come back when it is dropped.
#[must_use]
pub struct ActingAs {
    saved: Option<(nix::unistd::Uid, nix::unistd::Gid, Vec<nix::unistd::Gid>)>,
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        if let Some((uid, gid, groups)) = self.saved.take() {
            // back to root first: only root may set the gid and groups
            let restored = nix::unistd::seteuid(uid)
                .and_then(|_| nix::unistd::setegid(gid))
                .and_then(|_| nix::unistd::setgroups(&groups));
            if restored.is_err() {
                // continuing with the wrong ids would be worse than stopping
                crate::say_error!("cannot return to root's ids");
                std::process::exit(125);
            }
        }
    }
}

impl fmt::Display for UserIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)?;
        if !self.groups.is_empty() {
            let g: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            write!(f, ":{}", g.join(","))?;
        }
        Ok(())
    }
}

impl FromStr for UserIds {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::Syntax(s.into());
        let mut parts = s.splitn(3, ':');
        let uid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let gid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let groups = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list.split(',').map(|g| g.parse().map_err(|_| bad())).collect::<Result<_, _>>()?,
        };
        Ok(UserIds { uid, gid, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ids = UserIds { uid: 1500, gid: 1500, groups: vec![27, 100] };
        assert_eq!(ids.to_string(), "1500:1500:27,100");
        assert_eq!("1500:1500:27,100".parse::<UserIds>().unwrap(), ids);
        assert_eq!("0:0".parse::<UserIds>().unwrap(), UserIds { uid: 0, gid: 0, groups: vec![] });
        for bad in ["", "1500", "a:b", "1500:1500:x", "-1:0"] {
            assert!(bad.parse::<UserIds>().is_err(), "{bad}");
        }
    }
}
