//! The configuration file, read with serde_yaml: the site's `/etc/mpiexec-docker/config.yaml`, then the
//! user's `~/.config/mpiexec-docker/config.yaml` (`$MPIEXEC_DOCKER_CONFIG` replaces the user's file).
//! A later file overrides single values and extends lists. Every key is optional; an unknown key is an
//! error naming the file and the key, so a typo never goes unnoticed.
//!
//! What a user's file may change is decided per key: `engine`, `pull`, `devices` (but `cdi_dirs`)
//! freely; `env` and `mounts` only add to the site's; `relay_commands` and `cache_max_size` only
//! narrow the site's (a user's list keeps only commands the site allows, a user's cap is taken when
//! lower); `policy` and `devices.cdi_dirs` are the site's alone (a user's file naming them is an
//! error).
//!
//! ```yaml
//! engine: podman            # podman | docker  ($MPIEXEC_DOCKER_ENGINE and --engine override it)
//! pull: missing             # missing | newer | always | never: when to pull the image
//! env: [MY_APP_*, DATA_DIR] # more host variables to pass in (a trailing * is a prefix)
//! mounts: ["/scratch:/scratch", "/apps:/apps:ro"]   # SRC:DST[:ro|rw], added to every container
//! devices: { gpus: true, infiniband: true }         # pass GPUs / InfiniBand devices when present
//! # GPUs (and NICs) through the node's CDI specs when there are: auto | off; where the specs are
//! # (the site's file only: a user's file may not name them)
//! devices: { cdi: auto, cdi_dirs: [/etc/cdi, /var/run/cdi] }
//! relay_commands: [srun, ssh, rsh]                  # what the in-container relay may run on the host
//! cache_max_size: 50G       # images the tool fetched, per node and user: oldest removed beyond this
//! policy: { allowed_images: [...], default_image: IMAGE, forced_images: { PARTITION: IMAGE } }  # site only
//! registry_auth: /etc/mpiexec-docker/auth.json   # site only: registry logins, under each user's own
//! job_fetch_dir: /shared/mpiexec-docker/fetch     # site only: one registry fetch per job (see crate::job_fetch)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::engine::EngineKind;

pub const SYSTEM_CONFIG: &str = "/etc/mpiexec-docker/config.yaml";

/// Where the plugin tells the helper the site's file is (plugstack `config=`), when not
/// [`SYSTEM_CONFIG`]. Honoured only for a file root owns and only root may change: a user cannot
/// hand the helper a site file of their own.
pub const ENV_SITE_CONFIG: &str = "MPIEXEC_DOCKER_SITE_CONFIG";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull only when the image is not in the local store.
    #[default]
    Missing,
    /// Ask the registry at every start whether the tag changed, and fetch what did (the local image
    /// serves when the registry cannot be reached).
    Newer,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    #[serde(default = "yes")]
    pub gpus: bool,
    #[serde(default = "yes")]
    pub infiniband: bool,
    /// Whether devices the node's CDI specs describe are passed as CDI devices.
    #[serde(default)]
    pub cdi: CdiMode,
    /// Where the CDI specs are (the site's setting).
    #[serde(default = "cdi_dirs")]
    pub cdi_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CdiMode {
    /// CDI devices when the node has specs for the step's devices.
    #[default]
    Auto,
    /// Device nodes only.
    Off,
}

fn cdi_dirs() -> Vec<PathBuf> {
    crate::cdi::DEFAULT_DIRS.iter().map(PathBuf::from).collect()
}

fn yes() -> bool {
    true
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings { gpus: true, infiniband: true, cdi: CdiMode::Auto, cdi_dirs: cdi_dirs() }
    }
}

/// One configuration file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    engine: Option<EngineName>,
    pull: Option<PullPolicy>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    mounts: Vec<String>,
    devices: Option<DeviceSettings>,
    relay_commands: Option<Vec<String>>,
    cache_max_size: Option<String>,
    policy: Option<crate::policy::Policy>,
    registry_auth: Option<PathBuf>,
    job_fetch_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EngineName {
    Podman,
    Docker,
}

/// The merged configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub engine: EngineKind,
    pub pull: PullPolicy,
    pub env: Vec<String>,
    pub mounts: Vec<String>,
    pub devices: DeviceSettings,
    pub relay_commands: Vec<String>,
    /// Bytes; `None`: no cap.
    pub cache_max_size: Option<u64>,
    /// The site's policy (see [`crate::policy`]).
    pub policy: crate::policy::Policy,
    /// The site's registry logins (an auth file, root's alone), under each user's own: for the pulls
    /// root makes for users (Docker), and a registry's login alone for a rootless pull (see
    /// [`crate::registry_auth`]).
    pub registry_auth: Option<PathBuf>,
    /// A directory of the cluster's shared file system where a job's first node hands a registry
    /// image on to its other nodes (see [`crate::job_fetch`]); `None`: each node pulls for itself.
    pub job_fetch_dir: Option<PathBuf>,
    /// The site's file, for messages that name a site rule.
    pub site_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            engine: EngineKind::Podman,
            pull: PullPolicy::Missing,
            env: Vec::new(),
            mounts: Vec::new(),
            devices: DeviceSettings::default(),
            relay_commands: vec!["srun".into(), "ssh".into(), "rsh".into()],
            cache_max_size: None,
            registry_auth: None,
            job_fetch_dir: None,
            policy: crate::policy::Policy::default(),
            site_file: PathBuf::from(SYSTEM_CONFIG),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}; fix or remove that line")]
    Invalid { path: PathBuf, message: String },
    #[error("config file {path}: cannot read it: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{ENV_SITE_CONFIG}={path}: a site file must be root's and writable by root alone; name the site's file in plugstack.conf (config=)")]
    NotSites { path: PathBuf },
}

/// A site file named by [`ENV_SITE_CONFIG`]: absolute, and (when it exists) root's alone.
fn check_site_file(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let bad = || ConfigError::NotSites { path: path.to_path_buf() };
    if !path.is_absolute() {
        return Err(bad());
    }
    match std::fs::metadata(path) {
        Ok(m) if m.uid() == 0 && m.mode() & 0o022 == 0 => Ok(()),
        Ok(_) => Err(bad()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ConfigError::Unreadable { path: path.to_path_buf(), source }),
    }
}

impl Config {
    /// Reads the system file then the user's (or `$MPIEXEC_DOCKER_CONFIG`); missing files are fine.
    pub fn load() -> Result<Config, ConfigError> {
        let user = match std::env::var_os("MPIEXEC_DOCKER_CONFIG") {
            Some(p) => Some(PathBuf::from(p)),
            None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/mpiexec-docker/config.yaml")),
        };
        let site = match std::env::var_os(ENV_SITE_CONFIG) {
            Some(p) => {
                let p = PathBuf::from(p);
                check_site_file(&p)?;
                p
            }
            None => PathBuf::from(SYSTEM_CONFIG),
        };
        let mut paths = vec![site];
        paths.extend(user);
        Self::load_from(&paths)
    }

    /// Reads `paths` in order, the site's file first; a path that does not exist is skipped.
    pub fn load_from(paths: &[PathBuf]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(site) = paths.first() {
            config.site_file = site.clone();
        }
        for (i, path) in paths.iter().enumerate() {
            match std::fs::read_to_string(path) {
                Ok(text) => config.apply(path, &text, i == 0)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::Unreadable { path: path.clone(), source }),
            }
        }
        Ok(config)
    }

    fn apply(&mut self, path: &Path, text: &str, site: bool) -> Result<(), ConfigError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let file: ConfigFile = serde_yaml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        if let Some(engine) = file.engine {
            self.engine = match engine {
                EngineName::Podman => EngineKind::Podman,
                EngineName::Docker => EngineKind::Docker,
            };
        }
        if let Some(pull) = file.pull {
            self.pull = pull;
        }
        self.env.extend(file.env);
        self.mounts.extend(file.mounts);
        if let Some(mut d) = file.devices {
            // which specs root applies for a user is the site's choice alone
            if !site {
                if text_names_key(text, "cdi_dirs") {
                    return Err(ConfigError::Invalid {
                        path: path.to_path_buf(),
                        message: format!(
                            "devices.cdi_dirs is the site's setting ({}), not a user's",
                            self.site_file.display()
                        ),
                    });
                }
                d.cdi_dirs = std::mem::take(&mut self.devices.cdi_dirs);
            }
            if let Some(dir) = d.cdi_dirs.iter().find(|d| !d.is_absolute()) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("devices.cdi_dirs: '{}' is not an absolute path", dir.display()),
                });
            }
            self.devices = d;
        }
        if let Some(r) = file.relay_commands {
            // a user narrows what the site's relay may run, never widens it
            self.relay_commands = match site {
                true => r,
                false => r.into_iter().filter(|c| self.relay_commands.contains(c)).collect(),
            };
        }
        if let Some(size) = file.cache_max_size {
            let size = parse_size(&size).ok_or_else(|| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!("cache_max_size: '{size}' is not a size (write e.g. 500M, 20G or a number of bytes)"),
            })?;
            // a user's cap counts when it is lower than the site's
            self.cache_max_size = match (site, self.cache_max_size) {
                (false, Some(cap)) => Some(size.min(cap)),
                _ => Some(size),
            };
        }
        if let Some(auth) = file.registry_auth {
            if !site {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "registry_auth is the site's setting ({}), not a user's",
                        self.site_file.display()
                    ),
                });
            }
            self.registry_auth = Some(auth);
        }
        if let Some(dir) = file.job_fetch_dir {
            let message = match (site, dir.is_absolute()) {
                (false, _) => {
                    format!("job_fetch_dir is the site's setting ({}), not a user's", self.site_file.display())
                }
                (true, false) => format!("job_fetch_dir: '{}' is not an absolute path", dir.display()),
                (true, true) => String::new(),
            };
            if !message.is_empty() {
                return Err(ConfigError::Invalid { path: path.to_path_buf(), message });
            }
            self.job_fetch_dir = Some(dir);
        }
        if let Some(policy) = file.policy {
            if !site {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("policy is the site's setting ({}), not a user's", self.site_file.display()),
                });
            }
            self.policy = policy;
        }
        Ok(())
    }
}

/// Whether a YAML text sets `key` anywhere (a user's file is small; a key is refused wherever it is).
fn text_names_key(text: &str, key: &str) -> bool {
    fn walk(v: &serde_yaml::Value, key: &str) -> bool {
        match v {
            serde_yaml::Value::Mapping(m) => m.iter().any(|(k, v)| k.as_str() == Some(key) || walk(v, key)),
            serde_yaml::Value::Sequence(s) => s.iter().any(|v| walk(v, key)),
            _ => false,
        }
    }
    serde_yaml::from_str::<serde_yaml::Value>(text).is_ok_and(|v| walk(&v, key))
}

/// "20G", "500M", "1.5T", "1024" (bytes) → bytes; powers of 1024.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().trim_end_matches(['B', 'b']);
    let (num, mult) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 1u64 << 10),
        'M' | 'm' => (&t[..t.len() - 1], 1 << 20),
        'G' | 'g' => (&t[..t.len() - 1], 1 << 30),
        'T' | 't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    Some((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G"), Some(20 << 30));
        assert_eq!(parse_size("500MB"), Some(500 << 20));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
    }

    fn write(name: &str, text: &str) -> PathBuf {
        crate::test_scratch::file(name, text.as_bytes())
    }

    #[test]
    fn the_job_fetch_dir_is_the_sites_and_absolute() {
        let sys = write("sys-fetch.yaml", "job_fetch_dir: /shared/fetch\n");
        let c = Config::load_from(std::slice::from_ref(&sys)).unwrap();
        assert_eq!(c.job_fetch_dir, Some(PathBuf::from("/shared/fetch")));
        let user = write("user-fetch.yaml", "job_fetch_dir: /home/me/fetch\n");
        let e = Config::load_from(&[sys, user]).unwrap_err().to_string();
        assert!(e.contains("job_fetch_dir is the site's setting"), "{e}");
        let relative = write("sys-fetch-rel.yaml", "job_fetch_dir: fetch\n");
        let e = Config::load_from(&[relative]).unwrap_err().to_string();
        assert!(e.contains("is not an absolute path"), "{e}");
    }

    #[test]
    fn defaults_when_no_file() {
        let c = Config::load_from(&[PathBuf::from("/nonexistent/config.yaml")]).unwrap();
        assert_eq!(c, Config { site_file: "/nonexistent/config.yaml".into(), ..Config::default() });
    }

    #[test]
    fn user_file_overrides_and_extends() {
        let sys = write("sys.yaml", "engine: docker\nenv: [SITE_*]\nmounts: ['/apps:/apps:ro']\n");
        let user = write("user.yaml", "engine: podman\npull: never\nenv: [MINE]\ndevices: {gpus: false}\n");
        let c = Config::load_from(&[sys, user]).unwrap();
        assert_eq!(c.engine, EngineKind::Podman);
        assert_eq!(c.pull, PullPolicy::Never);
        assert_eq!(c.env, ["SITE_*", "MINE"]);
        assert_eq!(c.mounts, ["/apps:/apps:ro"]);
        assert_eq!(c.devices, DeviceSettings { gpus: false, ..DeviceSettings::default() });
    }

    #[test]
    fn a_user_cannot_loosen_the_site() {
        let sys = write(
            "sys-policy.yaml",
            "cache_max_size: 10G\nrelay_commands: [srun]\npolicy: {allowed_images: ['localhost/*']}\n",
        );
        let user = write("user-loose.yaml", "cache_max_size: 100G\nrelay_commands: [srun, ssh]\n");
        let c = Config::load_from(&[sys.clone(), user]).unwrap();
        assert_eq!(c.cache_max_size, Some(10 << 30), "a user's larger cap does not count");
        assert_eq!(c.relay_commands, ["srun"], "nor a command the site does not relay");
        assert_eq!(c.policy.allowed_images, ["localhost/*"]);
        let user = write("user-tight.yaml", "cache_max_size: 1G\n");
        assert_eq!(Config::load_from(&[sys.clone(), user]).unwrap().cache_max_size, Some(1 << 30));
        let user = write("user-policy.yaml", "policy: {allowed_images: ['*']}\n");
        let err = Config::load_from(&[sys, user]).unwrap_err().to_string();
        assert!(err.contains("policy is the site's setting"), "{err}");
    }

    #[test]
    fn only_the_site_names_cdi_directories() {
        let sys = write(
            "sys-cdi.yaml",
            "devices: {cdi_dirs: [/site/cdi]}
",
        );
        let user = write(
            "user-cdi.yaml",
            "devices: {cdi: off}
",
        );
        let c = Config::load_from(&[sys.clone(), user]).unwrap();
        assert_eq!((c.devices.cdi, &c.devices.cdi_dirs[..]), (CdiMode::Off, &[PathBuf::from("/site/cdi")][..]));
        let sneaky = write(
            "user-cdi2.yaml",
            "devices: {cdi_dirs: [/home/me/cdi]}
",
        );
        let err = Config::load_from(&[sys, sneaky]).unwrap_err().to_string();
        assert!(err.contains("devices.cdi_dirs is the site's setting"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let p = write("typo.yaml", "enigne: docker\n");
        let err = Config::load_from(std::slice::from_ref(&p)).unwrap_err().to_string();
        assert!(err.contains("typo.yaml") && err.contains("enigne"), "{err}");
        let p = write("badengine.yaml", "engine: lxc\n");
        let err = Config::load_from(&[p]).unwrap_err().to_string();
        assert!(err.contains("lxc"), "{err}");
    }
}
