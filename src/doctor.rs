//! `mpiexec_docker doctor`: why this node can or cannot run containers for the calling user, one
//! finding per check, each `ok`, `warn` or `fail` with the fix.
//!
//! Every check reads the node as it is (files, the engine's own answers, Slurm's configuration);
//! what it needs from outside (the plugstack file Slurm reads, the user) comes in [`Inputs`], so
//! that a check can be pointed at another file.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{CdiMode, Config};
use crate::devices::{self, DeviceKind, DeviceRoots, GpuAllocation};
use crate::engine::Engine;
use crate::plugstack::PluginArgs;
use crate::slurm_version::SlurmVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do (for `warn` and `fail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding { check, status: Status::Ok, detail: detail.into(), fix: None }
    }
    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }
    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }

    /// `CHECK STATUS detail; fix`, one line.
    pub fn line(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{:<10} {:<4}  {}; {}", self.check, self.status, self.detail, fix),
            None => format!("{:<10} {:<4}  {}", self.check, self.status, self.detail),
        }
    }
}

/// What the checks look at.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The plugstack file to read (`None`: the one Slurm reads, from `scontrol show config`, or
    /// `/etc/slurm/plugstack.conf`).
    pub plugstack: Option<PathBuf>,
    /// An image to check that it can be had (`--image`).
    pub image: Option<String>,
    /// The user's working directory (relative image files).
    pub cwd: PathBuf,
}

/// Runs every check, in order.
pub fn run(inputs: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    let config = match Config::load() {
        Ok(c) => {
            out.push(Finding::ok("config", "the site's and your configuration files parse"));
            Some(c)
        }
        Err(e) => {
            out.push(Finding::fail("config", e.to_string(), "fix the file (mpiexec_docker(1), FILES)"));
            None
        }
    };
    let config = config.unwrap_or_default();
    let engine = check_engine(&config, &mut out);
    if let Some(engine) = &engine {
        if engine.rootless() {
            out.extend(check_rootless());
        }
        out.extend(check_store(engine));
    }
    out.push(check_cgroup(Path::new("/sys/fs/cgroup")));
    let slurm = slurm_config();
    out.extend(check_slurm(&slurm, inputs));
    out.extend(check_devices(&config, engine.as_ref()));
    if let (Some(image), Some(engine)) = (&inputs.image, &engine) {
        out.push(check_image(engine, image, &inputs.cwd));
    }
    out
}

fn check_engine(config: &Config, out: &mut Vec<Finding>) -> Option<Engine> {
    let kind = std::env::var("MPIEXEC_DOCKER_ENGINE").ok().and_then(|e| e.parse().ok()).unwrap_or(config.engine);
    match Engine::find(kind) {
        Ok(engine) => {
            match engine.version() {
                Ok(v) => {
                    out.push(Finding::ok("engine", format!("{} {v} ({})", engine.name(), engine.program.display())))
                }
                Err(e) => out.push(Finding::fail("engine", e.to_string(), format!("repair {}", engine.name()))),
            }
            Some(engine)
        }
        Err(e) => {
            out.push(Finding::fail("engine", e.to_string(), "install Podman (apt install podman) or Docker"));
            None
        }
    }
}

/// Rootless Podman's needs: subordinate ids, the setuid mappers, a runtime directory.
fn check_rootless() -> Vec<Finding> {
    let mut out = Vec::new();
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_default();
    for (file, tool) in [("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        match subordinate_range(&text, &name, uid.as_raw()) {
            Some(count) if count >= 65536 => {
                out.push(Finding::ok("rootless", format!("{file}: {count} ids for {name}")));
            }
            Some(count) => out.push(Finding::warn(
                "rootless",
                format!("{file}: only {count} ids for {name}"),
                "images with ids above that fail to unpack: give 65536 (usermod)",
            )),
            None => out.push(Finding::fail(
                "rootless",
                format!("{file} has no range for {name}: rootless Podman cannot map the image's users"),
                format!("as root: usermod {tool} 100000-165535 {name} (a range no other user has)"),
            )),
        }
    }
    for tool in ["newuidmap", "newgidmap"] {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = crate::engine::which(tool, &path).or_else(|| {
            let p = PathBuf::from("/usr/bin").join(tool);
            p.exists().then_some(p)
        });
        match found {
            Some(p) => out.push(Finding::ok("rootless", format!("{} present", p.display()))),
            None => out.push(Finding::fail("rootless", format!("no {tool}"), "install it: apt install uidmap")),
        }
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if crate::runtime_dir::check_private(&dir, uid.as_raw()).is_ok() => {
            out.push(Finding::ok("rootless", format!("XDG_RUNTIME_DIR={}", dir.display())))
        }
        Some(dir) => out.push(Finding::warn(
            "rootless",
            format!("XDG_RUNTIME_DIR={} is not a private directory of yours", dir.display()),
            "unset it, or have pam_systemd make it (loginctl enable-linger)",
        )),
        None => out.push(Finding::ok("rootless", "no XDG_RUNTIME_DIR: Podman and mpiexec-docker use a private one")),
    }
    out
}

/// The number of subordinate ids `/etc/subuid`-style `text` gives `name` (or `uid`), summed.
pub fn subordinate_range(text: &str, name: &str, uid: u32) -> Option<u64> {
    let mut total = None;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let mut f = line.split(':');
        let (Some(who), Some(_start), Some(count)) = (f.next(), f.next(), f.next()) else { continue };
        if who == name || who == uid.to_string() {
            *total.get_or_insert(0) += count.trim().parse::<u64>().unwrap_or(0);
        }
    }
    total
}

/// File systems a container store must not be on (by `statfs` magic), and what they are.
pub fn shared_filesystem(magic: i64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("NFS"),
        0x0BD0_0BD0 => Some("Lustre"),
        0x4750_4653 => Some("GPFS"),
        0xFF53_4D42 | 0xFE53_4D42 => Some("SMB/CIFS"),
        0x1983_0326 => Some("BeeGFS"),
        0x0102_1997 => Some("9p"),
        0x6573_5546 => Some("FUSE"),
        _ => None,
    }
}

// statfs and statvfs field types differ between architectures: the casts are not no-ops everywhere
#[allow(clippy::unnecessary_cast)]
fn check_store(engine: &Engine) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = match engine.store_root() {
        Ok(r) => r,
        Err(e) => return vec![Finding::fail("store", e.to_string(), format!("repair {}", engine.name()))],
    };
    let at = existing_ancestor(&root);
    match nix::sys::statfs::statfs(&at) {
        Ok(fs) => match shared_filesystem(fs.filesystem_type().0 as i64) {
            Some(kind) => out.push(Finding::fail(
                "store",
                format!("{} is on {kind}: containers' layers need a node-local file system", root.display()),
                "set graphroot (and for rootless users rootless_storage_path) in storage.conf to a local disk",
            )),
            None => out.push(Finding::ok("store", format!("{} is node-local", root.display()))),
        },
        Err(e) => {
            out.push(Finding::warn("store", format!("cannot read {}: {e}", at.display()), "check the store path"))
        }
    }
    if let Ok(vfs) = nix::sys::statvfs::statvfs(&at) {
        let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
        let gib = free as f64 / (1u64 << 30) as f64;
        let line = format!("{gib:.1} GiB free under {}", at.display());
        out.push(match free {
            f if f < 1 << 30 => Finding::fail("store", line, "free space, or `mpiexec_docker images prune`"),
            f if f < 5 << 30 => {
                Finding::warn("store", line, "large images need more: free space or set cache_max_size")
            }
            _ => Finding::ok("store", line),
        });
    }
    out
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// The cgroup version of the node (by what `/sys/fs/cgroup` is).
#[allow(clippy::unnecessary_cast)] // (as in `check_store`)
pub fn check_cgroup(mount: &Path) -> Finding {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    match nix::sys::statfs::statfs(mount) {
        Ok(fs) if fs.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC => Finding::ok("cgroup", "v2 (unified)"),
        Ok(_) if mount.join("unified").exists() => Finding::ok("cgroup", "v1 (hybrid: v2 beside it)"),
        Ok(_) => Finding::ok("cgroup", "v1"),
        Err(e) => {
            Finding::warn("cgroup", format!("cannot read {}: {e}", mount.display()), "mount the cgroup file system")
        }
    }
}

/// `scontrol show config` as key → value, when Slurm's tools are here and answer.
fn slurm_config() -> Option<Vec<(String, String)>> {
    let mut cmd = std::process::Command::new("scontrol");
    cmd.args(["show", "config"]).stdin(std::process::Stdio::null());
    let out = crate::engine::output_within(&mut cmd, crate::engine::QUICK_LIMIT).ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    )
}

/// The plugin Slurm loads here (from the plugstack file `scontrol show config` names), the Slurm it
/// was built for, and the Slurm running.
pub fn installed_plugin() -> Option<(PathBuf, Option<SlurmVersion>, Option<SlurmVersion>)> {
    let (line, _) = plugstack_line(&plugstack_file(&slurm_config()))?;
    let plugin = PathBuf::from(line.split_whitespace().nth(1)?);
    let built = crate::plugin_file::built_for(&plugin).ok().flatten();
    Some((plugin, built, running_slurm()))
}

/// The plugstack file Slurm reads: `PlugStackConfig` of its configuration, or its default.
fn plugstack_file(config: &Option<Vec<(String, String)>>) -> PathBuf {
    config
        .as_ref()
        .and_then(|c| c.iter().find(|(k, _)| k == "PlugStackConfig").map(|(_, v)| PathBuf::from(v)))
        .unwrap_or_else(|| PathBuf::from("/etc/slurm/plugstack.conf"))
}

fn running_slurm() -> Option<SlurmVersion> {
    let mut cmd = std::process::Command::new("scontrol");
    cmd.arg("--version").stdin(std::process::Stdio::null());
    let out = crate::engine::output_within(&mut cmd, crate::engine::QUICK_LIMIT).ok()?;
    SlurmVersion::parse(&String::from_utf8_lossy(&out.stdout))
}

fn check_slurm(config: &Option<Vec<(String, String)>>, inputs: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    let get = |key: &str| config.as_ref()?.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let running = running_slurm();
    match (running, config) {
        (Some(v), Some(_)) => out.push(Finding::ok("slurm", format!("Slurm {v}"))),
        (Some(v), None) => out.push(Finding::warn(
            "slurm",
            format!("Slurm {v}, but `scontrol show config` does not answer"),
            "check slurmctld and munge",
        )),
        (None, _) => {
            out.push(Finding::ok("slurm", "no Slurm here: the helper works standalone"));
            return out;
        }
    }
    if config.is_some() {
        let proctrack = get("ProctrackType").unwrap_or_default();
        let task = get("TaskPlugin").unwrap_or_default();
        match proctrack.contains("cgroup") {
            true => out.push(Finding::ok("slurm", format!("ProctrackType={proctrack}, TaskPlugin={task}"))),
            false => out.push(Finding::warn(
                "slurm",
                format!("ProctrackType={proctrack}: a Docker step's container cannot join the step's cgroup"),
                "set ProctrackType=proctrack/cgroup (and TaskPlugin=task/cgroup,task/affinity)",
            )),
        }
    }
    let plugstack = inputs.plugstack.clone().unwrap_or_else(|| plugstack_file(config));
    let Some((line, args)) = plugstack_line(&plugstack) else {
        out.push(Finding::warn(
            "plugstack",
            format!("no spank_mpiexec_docker line in {} or its includes", plugstack.display()),
            "srun --container-image needs it: uncomment /etc/slurm/plugstack.conf.d/mpiexec-docker.conf, or add \
             `required /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_mpiexec_docker.so` to plugstack.conf",
        ));
        return out;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let plugin = PathBuf::from(words.get(1).copied().unwrap_or_default());
    match PluginArgs::parse(&args) {
        Ok(a) => {
            out.push(Finding::ok("plugstack", format!("{}: {}", plugstack.display(), line.trim())));
            out.push(check_plugin(&plugin, running));
            out.push(check_helper(&a.helper));
        }
        Err(e) => out.push(Finding::fail("plugstack", e.to_string(), "every job on this node fails until it is fixed")),
    }
    out
}

/// The line of `path` (or of a file it includes) that loads our plugin, and its arguments.
fn plugstack_line(path: &Path) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"include") {
            for file in words.get(1).map(|g| glob_files(g)).unwrap_or_default() {
                if let Some(found) = plugstack_line(&file) {
                    return Some(found);
                }
            }
            continue;
        }
        if words.get(1).is_some_and(|p| p.contains("spank_mpiexec_docker")) {
            return Some((line.to_string(), words[2..].iter().map(|w| w.to_string()).collect()));
        }
    }
    None
}

/// The files a plugstack `include` pattern names (`*` in the last component only, as Slurm's).
fn glob_files(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else { return Vec::new() };
    if !name.contains('*') {
        return vec![p.to_path_buf()];
    }
    let (head, tail) = name.split_once('*').unwrap_or((name, ""));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(head) && n.ends_with(tail) && n.len() >= head.len() + tail.len())
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn check_plugin(plugin: &Path, running: Option<SlurmVersion>) -> Finding {
    match crate::plugin_file::built_for(plugin) {
        Err(e) => Finding::fail("plugin", format!("{}: {e}", plugin.display()), "install the package, or fix the path"),
        Ok(None) => Finding::fail(
            "plugin",
            format!("{} is not an mpiexec-docker plugin (or one too old to say its Slurm)", plugin.display()),
            "install the package built for this Slurm",
        ),
        Ok(Some(built)) => match running {
            Some(run) if !built.plugin_compatible_with(run) => Finding::fail(
                "plugin",
                format!(
                    "{} is built for Slurm {}.{:02}, this node runs {}.{:02}: Slurm will not load it and every job here fails",
                    plugin.display(),
                    built.major(),
                    built.minor(),
                    run.major(),
                    run.minor()
                ),
                format!("install the package built for Slurm {}.{:02}", run.major(), run.minor()),
            ),
            _ => Finding::ok("plugin", format!("{} (built for Slurm {built})", plugin.display())),
        },
    }
}

fn check_helper(helper: &Path) -> Finding {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(helper) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            Finding::ok("helper", format!("{} (the plugin's helper)", helper.display()))
        }
        Ok(_) => {
            Finding::fail("helper", format!("{} is not an executable file", helper.display()), "reinstall the package")
        }
        Err(e) => Finding::fail(
            "helper",
            format!("the plugin's helper {}: {e}", helper.display()),
            "install the package on every node, or fix helper= in plugstack.conf",
        ),
    }
}

fn check_devices(config: &Config, engine: Option<&Engine>) -> Vec<Finding> {
    let mut out = Vec::new();
    let roots = DeviceRoots { dev: "/dev".into(), cgroup_devices_list: None };
    let found = devices::discover(&roots, &GpuAllocation(None));
    let gpus = found.iter().filter(|d| d.is_gpu()).count();
    let ib = found.iter().filter(|d| d.kind == DeviceKind::InfiniBand).count();
    out.push(Finding::ok("devices", format!("{gpus} GPU(s), {ib} InfiniBand device(s)")));
    if found.is_empty() {
        return out;
    }
    if config.devices.cdi == CdiMode::Off {
        if gpus > 0 {
            out.push(Finding::warn("cdi", "CDI is off (devices.cdi)", crate::device_choice::NO_CDI_NOTICE));
        }
        return out;
    }
    let (chosen, errors) = crate::device_choice::choose(config, &roots, &found);
    for e in &errors {
        out.push(Finding::fail("cdi", e.to_string(), "jobs with GPUs fail on this node until it is fixed"));
    }
    let bare: Vec<String> = found
        .iter()
        .filter(|d| d.is_gpu() && !chosen.covered.contains(&d.path))
        .map(|d| d.path.display().to_string())
        .collect();
    if !bare.is_empty() {
        out.push(Finding::warn(
            "cdi",
            format!("no CDI spec describes {}", bare.join(" ")),
            crate::device_choice::NO_CDI_NOTICE,
        ));
    } else if errors.is_empty() {
        let applies = engine.map(|e| e.applies_cdi().unwrap_or(false)).unwrap_or(false);
        let how = match applies {
            true => "the engine applies them",
            false => "this engine has no CDI: nodes, files and variables are passed by hand, hooks do not run",
        };
        out.push(Finding::ok(
            "cdi",
            format!("{} device node(s) through {} CDI device(s); {how}", found.len(), chosen.names.len()),
        ));
    }
    out
}

fn check_image(engine: &Engine, image: &str, cwd: &Path) -> Finding {
    let named = match crate::image_cache::name_image(image, cwd) {
        Ok(n) => n,
        Err(e) => return Finding::fail("image", e.to_string(), "name a registry image or a readable image file"),
    };
    let resolved = match crate::image_cache::resolve(named, None, None) {
        Ok(r) => r,
        Err(e) => return Finding::fail("image", e.to_string(), "name a registry image or a readable image file"),
    };
    for name in resolved.cached_names() {
        if engine.image_present(&name).unwrap_or(false) {
            return Finding::ok("image", format!("{image}: in this node's store"));
        }
    }
    match engine.remote_manifest(&resolved.local) {
        Ok(()) => Finding::ok("image", format!("{image}: the registry has it (fetched on first use)")),
        Err(why) => Finding::fail("image", format!("{image}: {why}"), "check the name, the registry and your login"),
    }
}

/// Exit status of `doctor`: 1 when any check failed.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.status == Status::Fail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_uid() {
        let text = "alice:100000:65536\n# bob:1:2\n1501:300000:1000\nalice:400000:10\n";
        assert_eq!(subordinate_range(text, "alice", 1500), Some(65546));
        assert_eq!(subordinate_range(text, "carol", 1501), Some(1000));
        assert_eq!(subordinate_range(text, "bob", 1502), None);
    }

    #[test]
    fn shared_file_systems_are_named() {
        assert_eq!(shared_filesystem(0x6969), Some("NFS"));
        assert_eq!(shared_filesystem(0x0BD00BD0), Some("Lustre"));
        assert_eq!(shared_filesystem(0xEF53), None, "ext4 is node-local");
    }

    #[test]
    fn plugstack_lines_are_found_through_includes() {
        let dir = crate::test_scratch::subdir("plugstack");
        std::fs::create_dir_all(dir.join("plugstack.conf.d")).unwrap();
        std::fs::write(dir.join("plugstack.conf"), format!("include {}/plugstack.conf.d/*.conf\n", dir.display()))
            .unwrap();
        std::fs::write(dir.join("plugstack.conf.d/a.conf"), "# required /x/spank_mpiexec_docker.so\n").unwrap();
        std::fs::write(
            dir.join("plugstack.conf.d/b.conf"),
            "optional /other/spank_x.so\nrequired /usr/lib/spank_mpiexec_docker.so engine=docker\n",
        )
        .unwrap();
        let (line, args) = plugstack_line(&dir.join("plugstack.conf")).unwrap();
        assert_eq!(line, "required /usr/lib/spank_mpiexec_docker.so engine=docker");
        assert_eq!(args, ["engine=docker"]);
        std::fs::write(dir.join("plugstack.conf.d/b.conf"), "").unwrap();
        assert_eq!(plugstack_line(&dir.join("plugstack.conf")), None, "a commented line loads nothing");
    }

    #[test]
    fn a_plugin_for_another_slurm_fails_with_the_fix() {
        let dir = crate::test_scratch::subdir("plugin");
        let file = dir.join("spank_mpiexec_docker.so");
        std::fs::write(&file, b"\x7fELF...mpiexec-docker-plugin-built-for-slurm=24.11.5\0...").unwrap();
        let f = check_plugin(&file, Some(SlurmVersion::new(22, 5, 8)));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("built for Slurm 24.11, this node runs 22.05"), "{}", f.detail);
        assert_eq!(check_plugin(&file, Some(SlurmVersion::new(24, 11, 1))).status, Status::Ok);
    }
}
