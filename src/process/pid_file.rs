//! The pid file: written once the listeners are ours, removed at exit only while it still
//! names this process (after an upgrade it names the new one).

use std::path::{Path, PathBuf};

pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's pid to `path` (through a temp file and a rename, so a reader
    /// never sees it half-written).
    pub fn create(path: &Path) -> std::io::Result<PidFile> {
        let pid = std::process::id();
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{pid}\n"))?;
        std::fs::rename(&tmp, path)?;
        Ok(PidFile {
            path: path.to_owned(),
            pid,
        })
    }

    /// Removes the file if it still holds our pid.
    pub fn remove(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .map(|s| s.trim() == self.pid.to_string())
            .unwrap_or(false);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("pid file {}: cannot remove: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_its_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.pid");
        let p = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        std::fs::write(&path, "1\n").unwrap();
        p.remove();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        let p = PidFile::create(&path).unwrap();
        p.remove();
        assert!(!path.exists());
    }
}
