//! The plugin's container options, with pyxis's names and syntax, and their environment defaults.
//!
//! | option | env default | meaning |
//! | --- | --- | --- |
//! | `--container-image=IMAGE` | `MPIEXEC_DOCKER_CONTAINER_IMAGE` | run the tasks in IMAGE |
//! | `--container-mounts=SRC:DST[:FLAGS][,...]` | `…_MOUNTS` | more mounts (pyxis's syntax: flags joined by `+`, `tmpfs` and `umount` sources, `./` relative paths) |
//! | `--container-workdir=PATH` | `…_WORKDIR` | working directory inside (default: the job's) |
//! | `--container-env=NAME[,...]` | `…_ENV` | these job variables win over the image's |
//! | `--[no-]container-remap-root` | `…_REMAP_ROOT` | be root inside (mapped to you; no host privilege) |
//! | `--[no-]container-mount-home` | `…_MOUNT_HOME` | mount your home directory at its path |
//! | `--container-readonly` / `--container-writable` | `…_READONLY` | read-only root file system |
//! | `--container-name=NAME[:FLAG]` | `…_NAME` | keep the container for the job's later steps that name it (FLAG: pyxis's `auto`, `create`, `exec`, `no_exec`) |
//! | `--container-unshare=net,ipc,uts` | `…_UNSHARE` | namespaces the step's container has of its own (default: the host's, as MPI needs) |
//! | `--container-save=PATH` | `…_SAVE` | save the container as an image file at PATH when the step ends |
//! | `--[no-]container-entrypoint` | `…_ENTRYPOINT` | run the image's entrypoint before the task (site default: plugstack `execute_entrypoint=`) |
//! | `--container-entrypoint-log` | `…_ENTRYPOINT_LOG` | show what the entrypoint prints (hidden otherwise, as with pyxis) |

use thiserror::Error;

use crate::container::Mount;
use crate::plugstack::parse_bool;

/// One option: its name (without `--`), placeholder, help, and whether it takes a value.
#[derive(Debug, Clone, Copy)]
pub struct OptionDef {
    pub name: &'static str,
    pub arginfo: Option<&'static str>,
    pub usage: &'static str,
}

pub const OPTIONS: &[OptionDef] = &[
    OptionDef {
        name: "container-image",
        arginfo: Some("[USER@][REGISTRY#]IMAGE[:TAG]|PATH"),
        usage: "[mpiexec-docker] run the job's tasks in this container image (Podman/Docker)",
    },
    OptionDef {
        name: "container-mounts",
        arginfo: Some("SRC:DST[:FLAGS][,SRC:DST...]"),
        usage: "[mpiexec-docker] bind mount[s] inside the container; flags joined by \"+\", e.g. \"ro+rprivate\"; \
                SRC may be ./relative, tmpfs or umount",
    },
    OptionDef {
        name: "container-workdir",
        arginfo: Some("PATH"),
        usage: "[mpiexec-docker] working directory inside the container (default: the job's)",
    },
    OptionDef {
        name: "container-env",
        arginfo: Some("NAME[,...]"),
        usage: "[mpiexec-docker] these job variables override the image's",
    },
    OptionDef {
        name: "container-remap-root",
        arginfo: None,
        usage: "[mpiexec-docker] be root inside the container (no host privilege)",
    },
    OptionDef {
        name: "no-container-remap-root",
        arginfo: None,
        usage: "[mpiexec-docker] keep your own uid inside (default)",
    },
    OptionDef {
        name: "container-mount-home",
        arginfo: None,
        usage: "[mpiexec-docker] mount your home directory in the container",
    },
    OptionDef {
        name: "no-container-mount-home",
        arginfo: None,
        usage: "[mpiexec-docker] do not mount your home directory (default)",
    },
    OptionDef {
        name: "container-readonly",
        arginfo: None,
        usage: "[mpiexec-docker] make the container's root file system read-only",
    },
    OptionDef {
        name: "container-writable",
        arginfo: None,
        usage: "[mpiexec-docker] keep the container's root file system writable (default)",
    },
    OptionDef {
        name: "container-name",
        arginfo: Some("NAME[:auto|create|exec|no_exec]"),
        usage: "[mpiexec-docker] name the container: later steps of the job that name it reuse it \
                (create: it must not exist yet; exec: it must)",
    },
    OptionDef {
        name: "container-unshare",
        arginfo: Some("net,ipc,uts"),
        usage: "[mpiexec-docker] give the container these namespaces of its own (default: the host's, which MPI \
                needs across nodes)",
    },
    OptionDef {
        name: "container-save",
        arginfo: Some("PATH"),
        usage:
            "[mpiexec-docker] save the container as an image file at PATH when the step ends (relative to the job's \
                directory; --container-image=PATH starts from it)",
    },
    OptionDef {
        name: "container-entrypoint",
        arginfo: None,
        usage: "[mpiexec-docker] run the image's entrypoint before each task (Slurm 23.11+)",
    },
    OptionDef {
        name: "no-container-entrypoint",
        arginfo: None,
        usage: "[mpiexec-docker] do not run the image's entrypoint (default, unless the site says otherwise)",
    },
    OptionDef {
        name: "container-entrypoint-log",
        arginfo: None,
        usage: "[mpiexec-docker] print the output of the image's entrypoint (hidden otherwise)",
    },
];

/// Environment variable holding the default of an option: `MPIEXEC_DOCKER_CONTAINER_<NAME>`.
/// pyxis's variable for the same default: `PYXIS_CONTAINER_IMAGE`, …
pub fn pyxis_env_name(option: &str) -> String {
    format!("PYXIS_{}", option.trim_start_matches("no-").to_ascii_uppercase().replace('-', "_"))
}

pub fn env_name(option: &str) -> String {
    format!("MPIEXEC_DOCKER_{}", option.trim_start_matches("no-").to_ascii_uppercase().replace('-', "_"))
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("--{option}: {reason}")]
    Bad { option: String, reason: String },
    #[error("unknown option --{0}")]
    Unknown(String),
}

/// The values given on the command line (None: not given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerOptions {
    pub image: Option<String>,
    pub mounts: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub env: Option<Vec<String>>,
    pub remap_root: Option<bool>,
    pub mount_home: Option<bool>,
    pub readonly: Option<bool>,
    pub name: Option<String>,
    /// The flag after the name (`auto` when none).
    pub name_mode: NameMode,
    pub entrypoint: Option<bool>,
    pub entrypoint_log: Option<bool>,
    pub save: Option<String>,
    pub unshare: Option<Vec<String>>,
}

/// What `--container-name=NAME:FLAG` asks of an existing container of that name (pyxis's flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameMode {
    /// Use it if it is there, else make it.
    #[default]
    Auto,
    /// Make it; it must not be there yet.
    Create,
    /// Use it; it must be there (running).
    Exec,
    /// Use its file system, not its processes' namespaces. Ours share the host's network, IPC and
    /// PID namespaces and a step's tasks start afresh in it either way, so this is `auto`.
    NoExec,
}

impl std::str::FromStr for NameMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(NameMode::Auto),
            "create" => Ok(NameMode::Create),
            "exec" => Ok(NameMode::Exec),
            "no_exec" => Ok(NameMode::NoExec),
            other => Err(format!("'{other}': the flag must be auto, create, exec or no_exec")),
        }
    }
}

impl std::fmt::Display for NameMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameMode::Auto => "auto",
            NameMode::Create => "create",
            NameMode::Exec => "exec",
            NameMode::NoExec => "no_exec",
        })
    }
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

impl ContainerOptions {
    /// Records and validates one option as given.
    pub fn apply(&mut self, option: &str, value: &str) -> Result<(), OptionError> {
        let bad = |reason: String| OptionError::Bad { option: option.to_string(), reason };
        match option {
            "container-image" => {
                if value.trim().is_empty() {
                    return Err(bad("needs an image name or an image file path".into()));
                }
                crate::image_source::ImageSource::parse(value).map_err(|e| bad(e.to_string()))?;
                self.image = Some(value.to_string());
            }
            "container-mounts" => {
                let mounts = list(value);
                for m in &mounts {
                    Mount::parse(m).map_err(|e| bad(e.to_string()))?;
                }
                self.mounts = Some(mounts);
            }
            "container-workdir" => {
                if !value.starts_with('/') {
                    return Err(bad(format!("'{value}' is not an absolute path")));
                }
                self.workdir = Some(value.to_string());
            }
            "container-env" => {
                let names = list(value);
                if let Some(n) = names.iter().find(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
                    return Err(bad(format!("'{n}' is not a variable name")));
                }
                self.env = Some(names);
            }
            "container-remap-root" => self.remap_root = Some(true),
            "no-container-remap-root" => self.remap_root = Some(false),
            "container-mount-home" => self.mount_home = Some(true),
            "no-container-mount-home" => self.mount_home = Some(false),
            "container-readonly" => self.readonly = Some(true),
            "container-writable" => self.readonly = Some(false),
            "container-name" => {
                let (value, flag) = value.split_once(':').unwrap_or((value, ""));
                self.name_mode = flag.parse().map_err(bad)?;
                let ok = !value.is_empty()
                    && value.len() <= 64
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    && value.starts_with(|c: char| c.is_ascii_alphanumeric());
                if !ok {
                    return Err(bad(format!(
                        "'{value}' is not a container name (letters, digits, '_', '.', '-'; at most 64)"
                    )));
                }
                self.name = Some(value.to_string());
            }
            "container-unshare" => {
                let names = list(value);
                if names.is_empty() {
                    return Err(bad("name one or more of net, ipc, uts".into()));
                }
                if let Some(n) = names.iter().find(|n| !["net", "ipc", "uts"].contains(&n.as_str())) {
                    return Err(bad(format!("'{n}' is not a namespace that can be unshared (net, ipc, uts)")));
                }
                self.unshare = Some(names);
            }
            "container-save" => {
                crate::container_save::check_target(value).map_err(|e| bad(e.to_string()))?;
                self.save = Some(value.to_string());
            }
            "container-entrypoint" => self.entrypoint = Some(true),
            "no-container-entrypoint" => self.entrypoint = Some(false),
            "container-entrypoint-log" => self.entrypoint_log = Some(true),
            "no-container-entrypoint-log" => self.entrypoint_log = Some(false),
            other => return Err(OptionError::Unknown(other.to_string())),
        }
        Ok(())
    }

    /// Fills what was not given from the environment defaults (`get` reads the job's environment).
    pub fn with_env_defaults<F: Fn(&str) -> Option<String>>(mut self, get: F) -> Result<Self, OptionError> {
        let mut defaults = ContainerOptions::default();
        for (option, is_bool) in [
            ("container-image", false),
            ("container-mounts", false),
            ("container-workdir", false),
            ("container-env", false),
            ("container-remap-root", true),
            ("container-mount-home", true),
            ("container-readonly", true),
            ("container-name", false),
            ("container-save", false),
            ("container-unshare", false),
            ("container-entrypoint", true),
            ("container-entrypoint-log", true),
        ] {
            // ours first, then pyxis's name for the same default (a job script written for pyxis
            // runs unchanged)
            let Some((var, value)) = [env_name(option), pyxis_env_name(option)]
                .into_iter()
                .find_map(|var| get(&var).filter(|v| !v.is_empty()).map(|v| (var, v)))
            else {
                continue;
            };
            if is_bool {
                let on = parse_bool(&value).map_err(|reason| OptionError::Bad { option: var.clone(), reason })?;
                let name = if on { option.to_string() } else { format!("no-{option}") };
                let name = if option == "container-readonly" && !on { "container-writable".to_string() } else { name };
                defaults.apply(&name, "")?;
            } else {
                defaults
                    .apply(option, &value)
                    .map_err(|e| OptionError::Bad { option: var.clone(), reason: e.to_string() })?;
            }
        }
        self.image = self.image.or(defaults.image);
        self.mounts = self.mounts.or(defaults.mounts);
        self.workdir = self.workdir.or(defaults.workdir);
        self.env = self.env.or(defaults.env);
        self.remap_root = self.remap_root.or(defaults.remap_root);
        self.mount_home = self.mount_home.or(defaults.mount_home);
        self.readonly = self.readonly.or(defaults.readonly);
        if self.name.is_none() {
            self.name = defaults.name;
            self.name_mode = defaults.name_mode;
        }
        self.entrypoint = self.entrypoint.or(defaults.entrypoint);
        self.save = self.save.or(defaults.save);
        self.unshare = self.unshare.or(defaults.unshare);
        self.entrypoint_log = self.entrypoint_log.or(defaults.entrypoint_log);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn parses_pyxis_syntax() {
        let mut o = ContainerOptions::default();
        o.apply("container-image", "localhost/md-openmpi").unwrap();
        o.apply("container-mounts", "/scratch:/data:ro,/apps").unwrap();
        o.apply("container-workdir", "/data").unwrap();
        o.apply("container-env", "PATH,MY_VAR").unwrap();
        o.apply("container-remap-root", "").unwrap();
        o.apply("container-readonly", "").unwrap();
        assert_eq!(o.mounts.as_deref(), Some(&["/scratch:/data:ro".to_string(), "/apps".to_string()][..]));
        assert_eq!(o.env.as_deref(), Some(&["PATH".to_string(), "MY_VAR".to_string()][..]));
        assert_eq!((o.remap_root, o.readonly, o.mount_home), (Some(true), Some(true), None));
    }

    #[test]
    fn bad_values_are_named() {
        let mut o = ContainerOptions::default();
        let e = o.apply("container-mounts", "relative:/x").unwrap_err().to_string();
        assert!(e.starts_with("--container-mounts: mount 'relative:/x'"), "{e}");
        let e = o.apply("container-workdir", "data").unwrap_err().to_string();
        assert!(e.contains("not an absolute path"), "{e}");
        assert!(o.apply("container-image", "--privileged").is_err());
        assert!(o.apply("container-env", "A-B").is_err());
        assert!(o.apply("container-name", "a/b").is_err());
        assert!(o.apply("container-name", "-x").is_err());
        o.apply("container-name", "my_env-1.0").unwrap();
        assert_eq!(o.name.as_deref(), Some("my_env-1.0"));
    }

    #[test]
    fn environment_defaults_fill_what_is_not_given() {
        let env = HashMap::from([
            ("MPIEXEC_DOCKER_CONTAINER_IMAGE", "img-from-env"),
            ("MPIEXEC_DOCKER_CONTAINER_REMAP_ROOT", "1"),
            ("MPIEXEC_DOCKER_CONTAINER_READONLY", "0"),
            ("MPIEXEC_DOCKER_CONTAINER_WORKDIR", "/w"),
        ]);
        let mut given = ContainerOptions::default();
        given.apply("container-workdir", "/given").unwrap();
        let o = given.with_env_defaults(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(o.image.as_deref(), Some("img-from-env"));
        assert_eq!(o.workdir.as_deref(), Some("/given"), "the command line wins");
        assert_eq!((o.remap_root, o.readonly), (Some(true), Some(false)));
        assert_eq!(env_name("no-container-mount-home"), "MPIEXEC_DOCKER_CONTAINER_MOUNT_HOME");
        // pyxis's names serve too, ours first
        let env = HashMap::from([
            ("PYXIS_CONTAINER_IMAGE", "pyxis-img"),
            ("PYXIS_CONTAINER_MOUNT_HOME", "y"),
            ("MPIEXEC_DOCKER_CONTAINER_WORKDIR", "/ours"),
            ("PYXIS_CONTAINER_WORKDIR", "/theirs"),
        ]);
        let o = ContainerOptions::default().with_env_defaults(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!((o.image.as_deref(), o.workdir.as_deref()), (Some("pyxis-img"), Some("/ours")));
        assert_eq!(o.mount_home, Some(true));
        let bad = HashMap::from([("MPIEXEC_DOCKER_CONTAINER_REMAP_ROOT", "maybe")]);
        assert!(ContainerOptions::default().with_env_defaults(|k| bad.get(k).map(|v| v.to_string())).is_err());
    }

    #[test]
    fn container_name_takes_pyxis_flags() {
        let mut o = ContainerOptions::default();
        o.apply("container-name", "dev:create").unwrap();
        assert_eq!((o.name.as_deref(), o.name_mode), (Some("dev"), NameMode::Create));
        o.apply("container-name", "dev").unwrap();
        assert_eq!(o.name_mode, NameMode::Auto);
        for (flag, mode) in [("exec", NameMode::Exec), ("no_exec", NameMode::NoExec), ("auto", NameMode::Auto)] {
            o.apply("container-name", &format!("x:{flag}")).unwrap();
            assert_eq!(o.name_mode, mode);
            assert_eq!(mode.to_string(), flag);
        }
        let e = o.apply("container-name", "x:maybe").unwrap_err().to_string();
        assert!(e.contains("auto, create, exec or no_exec"), "{e}");
        assert!(o.apply("container-name", ":exec").is_err());
    }
}
