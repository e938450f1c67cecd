//! What an installed plugin file says of itself: the Slurm release it was built for (a marked string
//! the plugin carries, see the plugin's `BUILT_FOR_MARKER`), read without loading it.

use std::path::Path;

use crate::slurm_version::SlurmVersion;

/// The marker's prefix; the version follows, ended by a NUL.
pub const MARKER: &[u8] = b"mpiexec-docker-plugin-built-for-slurm=";

/// The Slurm release the plugin at `path` was built for; `None` when the file is not our plugin.
pub fn built_for(path: &Path) -> std::io::Result<Option<SlurmVersion>> {
    let bytes = std::fs::read(path)?;
    Ok(find(&bytes))
}

fn find(bytes: &[u8]) -> Option<SlurmVersion> {
    let at = bytes.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
    let rest = &bytes[at..];
    let end = rest.iter().position(|&b| b == 0).filter(|&e| e <= 32)?;
    SlurmVersion::parse(std::str::from_utf8(&rest[..end]).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_among_other_bytes() {
        let mut file = vec![0x7f, b'E', b'L', b'F', 0, 1, 2];
        file.extend_from_slice(b"mpiexec-docker-plugin-built-for-slurm=24.11.5\0more");
        assert_eq!(find(&file), Some(SlurmVersion::new(24, 11, 5)));
        assert_eq!(find(b"\x7fELF nothing of ours"), None);
        assert_eq!(find(b"mpiexec-docker-plugin-built-for-slurm=garbage\0"), None);
    }
}
