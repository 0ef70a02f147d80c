//! Crash-safe file writes: a file is written whole (temp file, fsync, rename, directory
//! fsync), so a crash leaves the old content or the new, never a mix. This is the one such
//! write in the workspace (the device's workflow state, the gateway's records); write one
//! here rather than beside a caller. Crates below ota (hal, sensors) have no such write.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically with mode 0600: a crash leaves the old file or the
/// new one, never a mix, and no other user can read either (workflow documents may name
/// camera hosts; the state names what runs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with the new file created with `mode` (then reduced by the umask, as
/// `open(2)` does): for files other users may read, such as the gateway's records (0o666).
/// The temp file is `path` with the extension `tmp`; a stale one from a crash is replaced.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    // A stale temp file from a crash (possibly with wider permissions) is replaced.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Why [`read_bounded`] could not read a file.
#[derive(Debug)]
pub enum ReadError {
    /// A symbolic link, a directory, a device: not a regular file.
    NotRegular(&'static str),
    /// Larger than the limit.
    TooLarge(u64),
    /// Reading failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotRegular(what) => write!(f, "{what}, not a regular file"),
            ReadError::TooLarge(limit) => write!(f, "larger than {limit} bytes"),
            ReadError::Io(e) => e.fmt(f),
        }
    }
}

/// Reads a state file whole: `None` when it does not exist; refused when it is a symbolic
/// link (never followed), not a regular file (a FIFO cannot block the read) or larger
/// than `max_bytes` (at most `max_bytes + 1` bytes are read).
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, ReadError> {
    use std::io::Read;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ReadError::NotRegular("a symbolic link"));
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(if meta.is_dir() {
            "a directory"
        } else {
            "a special file"
        }));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge(max_bytes));
    }
    Ok(Some(bytes))
}

/// Creates `dir` (and its parents) and makes `dir` itself 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_private_and_replace_stale_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("wf");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let p = dir.join("state.json");
        // A stale, world-readable temp file from an older agent.
        std::fs::write(p.with_extension("tmp"), b"old").unwrap();
        std::fs::set_permissions(
            p.with_extension("tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write_atomic(&p, b"{}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!p.with_extension("tmp").exists());
    }

    #[test]
    fn a_wider_mode_replaces_the_file_whole_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sent.json");
        std::fs::write(&p, b"old content, longer than the new").unwrap();
        write_atomic_mode(&p, b"[]", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"[]");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        // 0644 less whatever the umask takes; never more.
        assert_eq!(mode & !0o644, 0, "{mode:o}");
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
        assert!(!p.with_extension("tmp").exists());
    }
}
