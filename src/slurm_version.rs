//! Slurm version numbers as Slurm encodes them: `major << 16 | minor << 8 | micro`.
//!
//! Slurm loads a SPANK plugin only when the plugin's `plugin_version` has the running Slurm's major and
//! minor numbers (the micro number is ignored), so the plugin is built per Slurm major.minor.

use std::fmt;

/// A Slurm release number, e.g. 22.05.8 (0x160508).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlurmVersion(pub u32);

/// `spank_prepend_task_argv` first appeared in Slurm 23.11.0.
pub const PREPEND_TASK_ARGV_SINCE: SlurmVersion = SlurmVersion::new(23, 11, 0);

impl SlurmVersion {
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        SlurmVersion(major << 16 | minor << 8 | micro)
    }

    /// Parses `22.05.8`, `23.11` or `slurm 22.05.8` (the output of `srun --version`).
    pub fn parse(text: &str) -> Option<Self> {
        let word = text.split_whitespace().last()?;
        let mut parts = word.split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let micro = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(Self::new(major, minor, micro))
    }

    pub fn major(self) -> u32 {
        self.0 >> 16
    }
    pub fn minor(self) -> u32 {
        (self.0 >> 8) & 0xff
    }
    pub fn micro(self) -> u32 {
        self.0 & 0xff
    }

    /// Whether a plugin built for `self` is loaded by a running Slurm `running` (same major.minor).
    pub fn plugin_compatible_with(self, running: SlurmVersion) -> bool {
        self.0 & 0xffff00 == running.0 & 0xffff00
    }
}

impl fmt::Display for SlurmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}.{}", self.major(), self.minor(), self.micro())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_slurm() {
        assert_eq!(SlurmVersion::new(22, 5, 8).0, 0x160508);
        assert_eq!(SlurmVersion::parse("slurm 22.05.8"), Some(SlurmVersion(0x160508)));
        assert_eq!(SlurmVersion::parse("23.11"), Some(SlurmVersion::new(23, 11, 0)));
        assert_eq!(SlurmVersion::parse("24.05.1-2").unwrap().to_string(), "24.05.1");
        assert_eq!(SlurmVersion::parse("garbage"), None);
    }

    #[test]
    fn compatibility_ignores_micro() {
        let built = SlurmVersion::new(22, 5, 0);
        assert!(built.plugin_compatible_with(SlurmVersion::new(22, 5, 8)));
        assert!(!built.plugin_compatible_with(SlurmVersion::new(23, 2, 0)));
        assert!(SlurmVersion::new(22, 5, 8) < PREPEND_TASK_ARGV_SINCE);
    }
}
