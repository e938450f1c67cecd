//! The SPANK plugin's arguments, as a site admin writes them on its `plugstack.conf` line:
//!
//! ```text
//! required /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_mpiexec_docker.so engine=podman helper=/usr/bin/mpiexec_docker
//! ```
//!
//! Every argument is one `key=value` word. An unknown key or a bad value is an error that names the
//! word and what would be accepted, so a typo never silently changes behaviour.

use std::path::PathBuf;

use thiserror::Error;

use crate::engine::EngineKind;

/// Default location of the helper binary the plugin runs on the nodes.
/// (where the package puts it).
pub const DEFAULT_HELPER: &str = "/usr/bin/mpiexec_docker";
/// Default site configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/mpiexec-docker/config.yaml";

/// The plugin's settings from `plugstack.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// `engine=podman|docker`: the container engine on the nodes.
    pub engine: EngineKind,
    /// `helper=PATH`: the `mpiexec_docker` binary (must be at the same path on every node).
    pub helper: PathBuf,
    /// `config=PATH`: the site configuration file.
    pub config: PathBuf,
    /// `mounts=SRC:DST[:FLAGS][,...]`: mounts added to every container.
    pub mounts: Vec<String>,
    /// `sbatch_support=0|1`: whether sbatch and salloc have the options (pyxis's meaning); with 0 a
    /// batch script or salloc's shell stays on the host, and the job's steps may still use images.
    pub sbatch_support: bool,
    /// `execute_entrypoint=0|1`: the site's default for `--[no-]container-entrypoint` (pyxis's key).
    pub execute_entrypoint: bool,
    /// `container_scope=job|global` (pyxis's key): with `global` a named container outlives its job,
    /// kept on each node as an image of the user's, and a later job's `--container-name=NAME` starts
    /// from it.
    pub global_scope: bool,
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            engine: EngineKind::Podman,
            helper: DEFAULT_HELPER.into(),
            config: DEFAULT_CONFIG.into(),
            mounts: Vec::new(),
            sbatch_support: true,
            execute_entrypoint: false,
            global_scope: false,
        }
    }
}

/// The keys `plugstack.conf` may set, for error messages and documentation.
pub const KNOWN_KEYS: &[&str] =
    &["engine", "helper", "config", "mounts", "sbatch_support", "execute_entrypoint", "container_scope"];

/// Each key's value and meaning (the manual page, spank_mpiexec_docker(8), is made from this).
pub const KEY_DOCS: &[(&str, &str, &str)] = &[
    ("engine", "podman|docker", "the container engine on the nodes (default podman; Docker's containers are started by root for the job's user)"),
    ("helper", "PATH", "the mpiexec_docker binary the plugin runs on the nodes (default /usr/bin/mpiexec_docker)"),
    ("config", "PATH", "the site configuration file (default /etc/mpiexec-docker/config.yaml)"),
    ("mounts", "SRC:DST[:FLAGS][,...]", "mounts added to every container of every job"),
    ("sbatch_support", "0|1", "whether sbatch and salloc have the --container-* options (default 1); with 0 batch scripts and salloc's shell run on the host, their steps may still use images"),
    ("execute_entrypoint", "0|1", "whether steps run the image's entrypoint when the user says neither --container-entrypoint nor --no-container-entrypoint (default 0)"),
    ("container_scope", "job|global", "pyxis's key: named containers (--container-name) last for their job (job, the default), or are kept on each node after it, as an image of the user's, for the user's later jobs (global)"),
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlugstackError {
    #[error("plugstack.conf argument '{word}' is not key=value; write e.g. engine=podman")]
    NotKeyValue { word: String },
    #[error("unknown plugstack.conf argument '{key}' (known: {}); fix or remove it in plugstack.conf", KNOWN_KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("plugstack.conf argument '{key}={value}': {reason}")]
    BadValue { key: String, value: String, reason: String },
}

impl PluginArgs {
    /// Parses the words after the plugin path on its `plugstack.conf` line.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Self, PlugstackError> {
        let mut args = PluginArgs::default();
        for word in words {
            let word = word.as_ref();
            let (key, value) =
                word.split_once('=').ok_or_else(|| PlugstackError::NotKeyValue { word: word.to_string() })?;
            let bad =
                |reason: String| PlugstackError::BadValue { key: key.to_string(), value: value.to_string(), reason };
            match key {
                "engine" => args.engine = value.parse().map_err(bad)?,
                "helper" => args.helper = absolute(value).map_err(bad)?,
                "config" => args.config = absolute(value).map_err(bad)?,
                "mounts" => args.mounts = value.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
                "sbatch_support" => args.sbatch_support = parse_bool(value).map_err(bad)?,
                "execute_entrypoint" => args.execute_entrypoint = parse_bool(value).map_err(bad)?,
                "container_scope" => {
                    args.global_scope = match value {
                        "job" => false,
                        "global" => true,
                        _ => return Err(bad("write job or global".into())),
                    }
                }
                _ => return Err(PlugstackError::UnknownKey { key: key.to_string() }),
            }
        }
        Ok(args)
    }
}

fn absolute(value: &str) -> Result<PathBuf, String> {
    if value.starts_with('/') {
        Ok(value.into())
    } else {
        Err("must be an absolute path".into())
    }
}

/// Booleans as admins write them: 1/0, true/false, yes/no, on/off.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "no" | "n" | "off" => Ok(false),
        _ => Err(format!("'{value}' is not a boolean (use 1 or 0)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented() {
        let documented: Vec<&str> = KEY_DOCS.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(documented, KNOWN_KEYS);
    }

    #[test]
    fn defaults_without_arguments() {
        let args = PluginArgs::parse::<&str>(&[]).unwrap();
        assert_eq!(args, PluginArgs::default());
        assert_eq!(args.engine, EngineKind::Podman);
    }

    #[test]
    fn parses_every_key() {
        let args = PluginArgs::parse(&[
            "engine=docker",
            "helper=/opt/md/bin/mpiexec_docker",
            "config=/etc/md.yaml",
            "mounts=/scratch:/scratch,/apps:/apps:ro",
            "sbatch_support=0",
            "execute_entrypoint=yes",
            "container_scope=job",
        ])
        .unwrap();
        assert_eq!(args.engine, EngineKind::Docker);
        assert_eq!(args.helper, PathBuf::from("/opt/md/bin/mpiexec_docker"));
        assert_eq!(args.config, PathBuf::from("/etc/md.yaml"));
        assert_eq!(args.mounts, vec!["/scratch:/scratch", "/apps:/apps:ro"]);
        assert!(!args.sbatch_support);
        assert!(args.execute_entrypoint);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = PluginArgs::parse(&["engine=podman", "enigne=docker"]).unwrap_err();
        assert_eq!(err, PlugstackError::UnknownKey { key: "enigne".into() });
        let text = err.to_string();
        assert!(text.contains("'enigne'") && text.contains("engine, helper"), "{text}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = PluginArgs::parse(&["engine=lxc"]).unwrap_err().to_string();
        assert!(err.contains("engine=lxc") && err.contains("podman or docker"), "{err}");
        let err = PluginArgs::parse(&["helper=bin/x"]).unwrap_err().to_string();
        assert!(err.contains("absolute"), "{err}");
        let err = PluginArgs::parse(&["podman"]).unwrap_err();
        assert_eq!(err, PlugstackError::NotKeyValue { word: "podman".into() });
        assert!(PluginArgs::parse(&["sbatch_support=maybe"]).is_err());
        let e = PluginArgs::parse(&["container_scope=node"]).unwrap_err().to_string();
        assert!(e.contains("container_scope=node") && e.contains("job or global"), "{e}");
        assert!(PluginArgs::parse(&["container_scope=global"]).unwrap().global_scope);
        assert!(!PluginArgs::parse(&["container_scope=job"]).unwrap().global_scope);
    }
}
