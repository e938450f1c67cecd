//! Spare step containers: later steps of a job start without an engine call.
//!
//! A step's container is made from the image's own files and removed when the step ends, so each step
//! paid a whole engine `run` (and a `rm`). Here, when a step ends, its container's placeholder is ended
//! at once and a background process of the user's (`step-container spare`) removes that container and
//! makes a fresh one exactly like it, the **spare**, for the job's next step on the node that asks for
//! the same container. That step takes the spare (a rename) instead of starting one: no engine call,
//! and still a container that nothing has run in yet, so what one step wrote into the container's
//! file system is never seen by the next. Everything else is as for any step container: the tasks
//! join it and stay Slurm's; its relay server came with it; the job's end removes whatever spare is
//! left (the sweep first waits for a spare maker still at work).
//!
//! "The same container" is the step's whole `step-container start` request but the step id (image,
//! mounts, working directories, GPUs, options): its hash is the spare's key. Only a Slurm step's
//! start (the plugin's, `--spares`: a job's end follows it) takes part, and only requests whose
//! container a later step would make identically take part: Podman (the containers are the user's
//! processes, not a daemon's put into a step's cgroup), no `--container-name` (those are kept and
//! shared as pyxis means), a registry image with the `missing` or `never` pull policy (a present
//! image is used as it is; an image file's content is checked by each step).
//!
//! Files, in the user's own state directory `spare-<JOB>/`: `ready-<KEY>` (the spare's answer and
//! name), `recipe-<STEP>` (the request of a step that may leave a spare), `claimed-<STEP>` (the name
//! of the spare a step took), `maker-<STEP>` (a spare maker's pid, for the sweep).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, PullPolicy};
use crate::engine::{Engine, EngineKind};
use crate::process::ProcessHandle;
use crate::step_contract::{StartArgs, Started};

/// A spare ready for a step: what `start` answers for it, and the container's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spare {
    pub started: Started,
    pub name: String,
}

/// A job's spares on this node, in the calling user's state directory.
pub struct Spares {
    dir: PathBuf,
}

/// Whether the container of request `a` may be left as a spare for, or taken from one by, a later
/// step (see the module's documentation).
pub fn eligible(a: &StartArgs, config: &Config, engine: &Engine) -> bool {
    a.spares
        && engine.kind == EngineKind::Podman
        && a.container_name.is_none()
        && !a.global_scope
        && a.step_cgroup.is_none()
        && !a.image.is_empty()
        && matches!(config.pull, PullPolicy::Missing | PullPolicy::Never)
        && matches!(
            crate::image_source::ImageSource::parse(&a.image),
            Ok(crate::image_source::ImageSource::Registry(_))
        )
}

/// The key of request `a`: the hash of the whole request but its step id (and the site login on
/// standard input, which only a pull reads).
pub fn key(a: &StartArgs) -> String {
    let same = StartArgs { step: String::new(), site_login_stdin: false, ..a.clone() };
    let digest = Sha256::digest(same.to_argv().join("\0").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Whether `word` may name a step or a key in a file name here (Slurm's step ids, `batch`,
/// `extern`, hex keys).
fn plain(word: &str) -> bool {
    !word.is_empty() && word.len() <= 64 && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Spares {
    /// The spares of job `job` under the user's state directory `state` (made, 0700, when absent).
    pub fn open(state: &Path, job: &str) -> Option<Spares> {
        if !crate::step_contract::is_job_id(job) {
            return None;
        }
        let dir = state.join(format!("spare-{job}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                log::warn!("no spare containers: {}: {e}", dir.display());
                return None;
            }
        }
        // the state directory is the user's own and private: a directory there is theirs
        let meta = std::fs::symlink_metadata(&dir).ok()?;
        (meta.is_dir() && std::os::unix::fs::MetadataExt::uid(&meta) == nix::unistd::geteuid().as_raw())
            .then_some(Spares { dir })
    }

    /// The spares of `job`, when the user has any here (nothing is made).
    pub fn existing(state: &Path, job: &str) -> Option<Spares> {
        let dir = state.join(format!("spare-{job}"));
        (crate::step_contract::is_job_id(job) && dir.is_dir()).then_some(Spares { dir })
    }

    fn file(&self, what: &str, word: &str) -> Option<PathBuf> {
        plain(word).then(|| self.dir.join(format!("{what}-{word}")))
    }

    /// Takes the spare ready for `key`, for step `step`: `None` when there is none, or when its
    /// container's process is no longer our placeholder of user `uid` (it is then left to the job's
    /// end).
    pub fn claim(&self, key: &str, step: &str, uid: u32) -> Option<Spare> {
        let ready = self.file("ready", key)?;
        let claimed = self.file("claimed", step)?;
        // the rename is the claim: of concurrent steps, one gets the spare
        std::fs::rename(&ready, &claimed).ok()?;
        let spare: Spare = serde_json::from_slice(&std::fs::read(&claimed).ok()?).ok()?;
        let process = ProcessHandle::open(spare.started.pid)?;
        if crate::step_join::check_pause(spare.started.pid, uid).is_err() || !process.alive() {
            log::warn!("the spare container {} is gone; this step starts its own", spare.name);
            let _ = std::fs::remove_file(&claimed);
            return None;
        }
        Some(spare)
    }

    /// The name of the spare step `step` took, if it took one.
    pub fn claimed_by(&self, step: &str) -> Option<String> {
        let text = std::fs::read(self.file("claimed", step)?).ok()?;
        serde_json::from_slice::<Spare>(&text).ok().map(|s| s.name)
    }

    /// Offers `spare` for the next step asking for `key`; `false` when one is offered already (the
    /// caller then removes its own).
    pub fn offer(&self, key: &str, spare: &Spare) -> bool {
        let Some(ready) = self.file("ready", key) else { return false };
        let tmp = self.dir.join(format!(".offer-{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(serde_json::to_string(spare).expect("plain data").as_bytes()));
        // a link never replaces: an offered spare is never lost under another
        let offered = written.is_ok() && std::fs::hard_link(&tmp, &ready).is_ok();
        let _ = std::fs::remove_file(&tmp);
        offered
    }

    /// Whether a spare is offered for `key`.
    pub fn offered(&self, key: &str) -> bool {
        self.file("ready", key).is_some_and(|p| p.exists())
    }

    /// Whether a step asked for the container of `key` here before (the first one notes it).
    pub fn seen(&self, key: &str) -> bool {
        let Some(path) = self.file("seen", key) else { return false };
        let made = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
        matches!(made, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists)
    }

    /// The job these spares belong to.
    pub fn job(&self) -> &str {
        self.dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("spare-")).unwrap_or("")
    }

    /// Notes the container step `step` runs in, when the step takes part in spares (its end then
    /// removes that container in the background).
    pub fn note_claim(&self, step: &str, spare: &Spare) {
        let Some(path) = self.file("claimed", step) else { return };
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(serde_json::to_string(spare).expect("plain data").as_bytes()));
    }

    /// [`Spares::claim`]; when no spare is ready but a maker is making one, waits for it (`limit` at
    /// most, or until the maker is gone).
    pub fn claim_or_wait(&self, key: &str, step: &str, uid: u32, limit: std::time::Duration) -> Option<Spare> {
        if let Some(spare) = self.claim(key, step, uid) {
            return Some(spare);
        }
        let maker = self.file("making", key).and_then(|p| live_background(&p))?;
        let deadline = std::time::Instant::now() + limit;
        while !self.offered(key) && maker.alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.claim(key, step, uid)
    }

    /// The right to make the spare of `key` (released when dropped): `None` when a spare is offered
    /// already or another maker is at it.
    pub fn making(&self, key: &str) -> Option<Making> {
        let path = self.file("making", key)?;
        for _ in 0..2 {
            if self.offered(key) {
                return None;
            }
            let made = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
            match made {
                Ok(mut f) => {
                    let _ = f.write_all(std::process::id().to_string().as_bytes());
                    return Some(Making { path });
                }
                // a maker that died left its file: taken over
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && live_background(&path).is_none() => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Forgets which container step `step` runs in (it is being removed).
    pub fn release(&self, step: &str) {
        if let Some(p) = self.file("claimed", step) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Notes the pid of a background process (`what`: maker or remover) of step `step`: the job's
    /// end ends it.
    pub fn note_background(&self, what: &str, step: &str, pid: u32) {
        if let Some(p) = self.file(&format!("bg-{what}"), step) {
            let _ = std::fs::write(p, pid.to_string());
        }
    }

    /// A background process of step `step` is done.
    pub fn background_done(&self, what: &str, step: &str) {
        if let Some(p) = self.file(&format!("bg-{what}"), step) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// At the job's end: waits for every spare maker and remover still at work (ending one that
    /// takes too long, with its engine calls), then forgets everything; the sweep then removes the
    /// containers by their job label.
    pub fn end_job(self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().starts_with("bg-") {
                    continue;
                }
                let pid = std::fs::read_to_string(entry.path()).ok().and_then(|p| p.trim().parse::<i32>().ok());
                if let Some(pid) = pid.filter(|p| *p > 1) {
                    end_background(pid);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The right to make a spare (see [`Spares::making`]).
pub struct Making {
    path: PathBuf,
}

impl Drop for Making {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The live background process (`step-container spare`) whose pid file `path` is.
fn live_background(path: &Path) -> Option<ProcessHandle> {
    let pid = std::fs::read_to_string(path).ok()?.trim().parse::<i32>().ok().filter(|p| *p > 1)?;
    live_background_pid(pid)
}

/// Process `pid`, when it is a live background process of ours (`step-container spare`).
fn live_background_pid(pid: i32) -> Option<ProcessHandle> {
    let process = ProcessHandle::open(pid)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = cmdline.windows(b"step-container\0spare".len()).any(|w| w == b"step-container\0spare");
    (ours && process.alive()).then_some(process)
}

/// How long the job's end waits for a spare maker or remover to finish on its own: an engine run
/// killed half-way can leave the runtime's half-made container behind, outside the engine's records.
const BACKGROUND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits for background process `pid` to finish ([`BACKGROUND_WAIT`] at most); then ends it and
/// everything of its session (it leads one of its own; the engine calls it made run in process
/// groups of theirs, in that session), and waits for them.
fn end_background(pid: i32) {
    let Some(process) = live_background_pid(pid) else { return };
    if process.wait(Some(BACKGROUND_WAIT)) {
        return;
    }
    log::warn!("a spare container's background process {pid} did not finish within {BACKGROUND_WAIT:?}; ending it");
    process.kill(nix::sys::signal::Signal::SIGKILL);
    let mut ended = vec![process];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(other) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Some(handle) = ProcessHandle::open(other) else { continue };
            // read after the handle was opened: the session is that very process's
            if session_of(other) == Some(pid) && handle.alive() {
                handle.kill(nix::sys::signal::Signal::SIGKILL);
                ended.push(handle);
            }
        }
    }
    for handle in &ended {
        handle.wait(Some(std::time::Duration::from_secs(5)));
    }
}

/// The session id of process `pid` (`/proc/PID/stat`'s sixth field, after the command's name).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(step: &str) -> StartArgs {
        StartArgs {
            job: "42".into(),
            step: step.into(),
            image: "localhost/md-openmpi".into(),
            workdir: "/home/u".into(),
            engine: Some(EngineKind::Podman),
            ..StartArgs::default()
        }
    }

    #[test]
    fn steps_asking_for_the_same_container_share_a_key_and_others_do_not() {
        assert_eq!(key(&request("0")), key(&request("7")));
        let other_gpus = StartArgs { gpus: Some("1".into()), ..request("7") };
        assert_ne!(key(&request("0")), key(&other_gpus));
        let other_mount = StartArgs { mounts: vec!["/data:/data".into()], ..request("7") };
        assert_ne!(key(&request("0")), key(&other_mount));
        let other_image = StartArgs { image: "localhost/md-mpich".into(), ..request("7") };
        assert_ne!(key(&request("0")), key(&other_image));
    }

    #[test]
    fn a_spare_is_offered_once_and_taken_once() {
        let state = tempfile::tempdir().unwrap();
        let spares = Spares::open(state.path(), "42").unwrap();
        // a live process of ours that is no placeholder: never handed to a step
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let started = Started::from_image_info(child.id() as i32, "null\nPATH=/bin").unwrap();
        let spare = Spare { started, name: "c1".into() };
        assert!(spares.offer("k", &spare));
        assert!(!spares.offer("k", &Spare { name: "c2".into(), ..spare.clone() }), "one spare per key");
        assert!(spares.offered("k"));
        assert!(spares.claim("k", "3", nix::unistd::getuid().as_raw()).is_none(), "not our placeholder");
        assert!(!spares.offered("k"), "taken, whatever it was");
        assert!(spares.claim("k", "4", 0).is_none(), "taken once");
        child.kill().unwrap();
        let _ = child.wait();
    }

    #[test]
    fn a_process_session_is_read() {
        assert_eq!(session_of(std::process::id() as i32), Some(nix::unistd::getsid(None).unwrap().as_raw()));
    }

    #[test]
    fn hostile_words_make_no_file() {
        let state = tempfile::tempdir().unwrap();
        assert!(Spares::open(state.path(), "../x").is_none());
        let spares = Spares::open(state.path(), "42").unwrap();
        assert!(spares.file("ready", "../../etc").is_none());
        assert!(spares.claimed_by("a/b").is_none());
    }
}
