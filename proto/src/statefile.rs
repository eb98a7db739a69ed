//! Local state files (checkpoints, the witness view): one way to write them
//! and one way to read them, for every program.
//!
//! - [`write_atomic`] leaves either the old or the new content, never a mix,
//!   and returns only once the new content survives a power loss: temp file
//!   in the same folder, fsync, rename, fsync of the folder.
//! - [`read_json`] tells a missing file (`None`: nothing was ever saved)
//!   apart from an unreadable or corrupt one, which is an error naming the
//!   file and the fix, never an empty default: a promise forgotten
//!   silently is a promise broken.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A state file that exists but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path} is unusable: {problem}; fix: {fix}")]
pub struct StateFileError {
    pub what: String,
    pub path: PathBuf,
    pub problem: String,
    pub fix: String,
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a state file needs a name",
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `value` as JSON with [`write_atomic`].
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    write_atomic(path, &bytes).map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))
}

/// Reads a JSON state file: `Ok(None)` if it does not exist; an error
/// naming `what`, the file and `fix` if it cannot be read or parsed.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    fix: &str,
) -> Result<Option<T>, StateFileError> {
    let err = |problem: String| StateFileError {
        what: what.to_string(),
        path: path.to_path_buf(),
        problem,
        fix: fix.to_string(),
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot read it: {e}"))),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| err(format!("corrupt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_none_written_reads_back_and_corrupt_names_file_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let r: Option<Vec<u32>> = read_json(&p, "the test state", "nothing").unwrap();
        assert!(r.is_none());
        write_json(&p, &vec![1u32, 2, 3]).unwrap();
        let r: Option<Vec<u32>> = read_json(&p, "the test state", "nothing").unwrap();
        assert_eq!(r, Some(vec![1, 2, 3]));
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);

        std::fs::write(&p, b"{\"trunc").unwrap();
        let e = read_json::<Vec<u32>>(&p, "the test state", "run `x reset`").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("the test state"), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("corrupt"), "{msg}");
        assert!(msg.contains("fix: run `x reset`"), "{msg}");
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be: exists, cannot be read as a file.
        let p = dir.path().join("state.json");
        std::fs::create_dir(&p).unwrap();
        let e = read_json::<Vec<u32>>(&p, "the test state", "f").unwrap_err();
        assert!(e.to_string().contains("cannot read it"), "{e}");
    }

    #[test]
    fn rewriting_replaces_the_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        write_atomic(&p, b"a much longer first content").unwrap();
        write_atomic(&p, b"short").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short");
    }
}
