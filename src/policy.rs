//! The site's policy (`policy:` in the site's configuration file; a user's file may not set it): which
//! images may be used, an image implied when a step names none, an image every task of a partition
//! runs in. A refused image gets one line naming the rule and the file.
//!
//! ```yaml
//! policy:
//!   allowed_images: [docker.io/library/*, registry.site.org/*, /shared/images/*]
//!   default_image: registry.site.org/base:2025   # srun/sbatch without --container-image run in it
//!   forced_images: { gpu: registry.site.org/cuda:12 }   # partition → image: every task, no other
//! ```
//!
//! Patterns are whole references (`*` matches anything, also `/`), compared with the reference as
//! written and as the engines complete it (`ubuntu` → `docker.io/library/ubuntu:latest`); an image
//! file is compared by its real path (links resolved), so a link cannot take a file past the rule.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::image_source::ImageSource;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Images that may be used (registry reference patterns, image file path patterns); empty: all.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// The image of a step that names none (the plugin).
    #[serde(default)]
    pub default_image: Option<String>,
    /// Partition → the image every task of it runs in.
    #[serde(default)]
    pub forced_images: BTreeMap<String, String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("image '{image}' is not allowed here (the site's policy.allowed_images in {file}: {patterns}); use one of those")]
    NotAllowed { image: String, file: String, patterns: String },
    #[error("--container-image={image}: every task of partition '{partition}' runs in {forced} (the site's policy.forced_images in {file}); drop the option or use another partition")]
    Forced { image: String, partition: String, forced: String, file: String },
}

/// `*` matches any run of characters (`/` included); everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The reference as the engines complete a short one: `ubuntu` → `docker.io/library/ubuntu:latest`.
pub fn completed_reference(reference: &str) -> String {
    let (name, tag) = match reference.rsplit_once('@') {
        Some((n, digest)) => (n.to_string(), format!("@{digest}")),
        None => match reference.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
            _ => (reference.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let name = match (has_registry, name.contains('/')) {
        (true, _) => name,
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    format!("{name}{tag}")
}

impl Policy {
    /// Whether `image` (as the user named it; files relative to `cwd`) may be used. `file` names
    /// the site's configuration file in the refusal.
    pub fn check_image(&self, image: &str, cwd: &Path, file: &Path) -> Result<(), PolicyError> {
        if self.allowed_images.is_empty() {
            return Ok(());
        }
        let candidates: Vec<String> = match ImageSource::parse(image) {
            Ok(ImageSource::Archive { path, .. }) => {
                let path = cwd.join(path);
                // the real path: a link in an allowed place cannot name a file elsewhere
                match std::fs::canonicalize(&path) {
                    Ok(real) => vec![real.display().to_string()],
                    Err(_) => vec![path.display().to_string()],
                }
            }
            Ok(ImageSource::Registry(reference)) => {
                let completed = completed_reference(&reference);
                vec![reference, completed]
            }
            // an image of a local store: its name there, and the URI as written
            Ok(ImageSource::Store { reference, .. }) => {
                let completed = completed_reference(&reference);
                vec![image.to_string(), reference, completed]
            }
            // a name no engine takes is refused with its own reason later
            Err(_) => return Ok(()),
        };
        self.judge(image, &candidates, file)
    }

    /// Whether one of `candidates` (the forms of the image the user named `image`) is allowed.
    fn judge(&self, image: &str, candidates: &[String], file: &Path) -> Result<(), PolicyError> {
        if self.allowed_images.is_empty() {
            return Ok(());
        }
        let allowed = candidates.iter().any(|c| self.allowed_images.iter().any(|p| glob_match(p, c)));
        match allowed {
            true => Ok(()),
            false => Err(PolicyError::NotAllowed {
                image: image.into(),
                file: file.display().to_string(),
                patterns: self.allowed_images.join(", "),
            }),
        }
    }

    /// [`Policy::check_image`] for an image already opened: a file is judged by the real path of what
    /// was opened (`opened`), so that no name swapped between a check and the open can pass.
    pub fn check_named(&self, named: &crate::image_cache::Named, text: &str, file: &Path) -> Result<(), PolicyError> {
        match named.opened_path() {
            Some(real) => self.judge(text, &[real.display().to_string()], file),
            None => self.check_image(text, Path::new("/"), file),
        }
    }

    /// The image a step of `partition` runs in: the forced one (a different one asked for is
    /// refused), the one asked for, or the default; `None`: no container.
    pub fn step_image(
        &self,
        asked: Option<&str>,
        partition: Option<&str>,
        file: &Path,
    ) -> Result<Option<String>, PolicyError> {
        if let Some(forced) = partition.and_then(|p| self.forced_images.get(p)) {
            return match asked {
                Some(a) if a != forced => Err(PolicyError::Forced {
                    image: a.into(),
                    partition: partition.unwrap_or_default().into(),
                    forced: forced.clone(),
                    file: file.display().to_string(),
                }),
                _ => Ok(Some(forced.clone())),
            };
        }
        Ok(asked.map(str::to_string).or_else(|| self.default_image.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("docker.io/library/*", "docker.io/library/ubuntu:22.04"));
        assert!(glob_match("*/md-*:latest", "localhost/md-openmpi:latest"));
        assert!(!glob_match("docker.io/library/*", "ghcr.io/x/y"));
        assert!(glob_match("exact:1", "exact:1") && !glob_match("exact:1", "exact:12"));
    }

    #[test]
    fn references_are_completed_as_the_engines_do() {
        assert_eq!(completed_reference("ubuntu"), "docker.io/library/ubuntu:latest");
        assert_eq!(completed_reference("nvidia/cuda:12.4"), "docker.io/nvidia/cuda:12.4");
        assert_eq!(completed_reference("localhost/md-tiny"), "localhost/md-tiny:latest");
        assert_eq!(completed_reference("reg.site:5000/a/b@sha256:ab"), "reg.site:5000/a/b@sha256:ab");
    }

    #[test]
    fn images_outside_the_allowed_ones_are_refused_by_the_rule() {
        let p = Policy {
            allowed_images: vec!["docker.io/library/*".into(), "/shared/images/*".into()],
            ..Default::default()
        };
        let site = Path::new("/etc/mpiexec-docker/config.yaml");
        assert!(p.check_image("ubuntu:24.04", Path::new("/"), site).is_ok());
        let err = p.check_image("ghcr.io/evil/miner", Path::new("/"), site).unwrap_err().to_string();
        assert!(
            err.contains("not allowed here")
                && err.contains("policy.allowed_images in /etc/mpiexec-docker/config.yaml"),
            "{err}"
        );
        assert!(p.check_image("./app.tar", Path::new("/shared/images"), site).is_ok());
        assert!(p.check_image("/home/u/app.tar", Path::new("/"), site).is_err());
        assert!(Policy::default().check_image("anything", Path::new("/"), site).is_ok());
    }

    #[test]
    fn forced_and_default_images() {
        let site = Path::new("/etc/mpiexec-docker/config.yaml");
        let p = Policy {
            default_image: Some("base".into()),
            forced_images: BTreeMap::from([("gpu".to_string(), "cuda".to_string())]),
            ..Default::default()
        };
        assert_eq!(p.step_image(None, Some("debug"), site).unwrap(), Some("base".into()));
        assert_eq!(p.step_image(Some("mine"), Some("debug"), site).unwrap(), Some("mine".into()));
        assert_eq!(p.step_image(None, Some("gpu"), site).unwrap(), Some("cuda".into()));
        assert_eq!(p.step_image(Some("cuda"), Some("gpu"), site).unwrap(), Some("cuda".into()));
        let err = p.step_image(Some("mine"), Some("gpu"), site).unwrap_err().to_string();
        assert!(err.contains("every task of partition 'gpu' runs in cuda"), "{err}");
        assert_eq!(Policy::default().step_image(None, None, site).unwrap(), None);
    }
}
