//! Staging a bundle's files: the rules every transfer shares (the agent's HTTP download
//! and the MQTT chunk fetcher of [`crate::model_chunks`]), so that either one resumes what
//! the other began and neither can put in place what the manifest does not list.
//!
//! A file `<path>` is written to `<staging>/<path>.part`, hashed as it is written, and
//! renamed to `<staging>/<path>` only when complete and matching the signed manifest.
//!
//! What it must not do: touch anything before every listed path and digest passed
//! ([`check_files`]); follow a symbolic link planted in the staging directory (every file
//! is opened with `O_NOFOLLOW`); keep a part longer than its file, or a finished file that
//! does not match.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::{BundleFile, check_file_path, is_sha256_hex};

/// Suffix of a file being transferred, next to where the finished file goes.
pub const PART_SUFFIX: &str = ".part";

/// Why a file cannot be staged.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// A bundle file path that cannot be staged.
    #[error("bundle file {path:?} is refused: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bundle file's listed digest is not 64 lowercase hex digits.
    #[error("bundle file {path:?} has sha256 {sha256:?}, not 64 lowercase hex digits")]
    BadDigest {
        /// The path.
        path: String,
        /// The listed digest.
        sha256: String,
    },
    /// A complete file does not hash to the manifest's digest; its part was removed.
    #[error("{file:?} has sha256 {actual}, the manifest says {expected}; part removed")]
    HashMismatch {
        /// The bundle path.
        file: String,
        /// The manifest's digest.
        expected: String,
        /// The digest of what is there.
        actual: String,
    },
    /// A file-system operation in the staging directory failed.
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Checks a verified manifest's files before anything is touched: each path passes
/// [`check_file_path`] and does not end in [`PART_SUFFIX`], none is listed twice, each
/// digest is 64 lowercase hex digits. Returns the total size (an overflow is refused).
pub fn check_files(files: &[BundleFile]) -> Result<u64, StagingError> {
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for f in files {
        let bad = |reason: String| StagingError::BadPath {
            path: f.path.clone(),
            reason,
        };
        check_file_path(&f.path).map_err(bad)?;
        if f.path.ends_with(PART_SUFFIX) {
            return Err(bad(format!(
                "ends with {PART_SUFFIX:?}, the suffix of files being staged"
            )));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(bad("listed twice".into()));
        }
        if !is_sha256_hex(&f.sha256) {
            return Err(StagingError::BadDigest {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
            });
        }
        total = total
            .checked_add(f.size)
            .ok_or_else(|| bad("the bundle's total size overflows".into()))?;
    }
    Ok(total)
}

/// One file of a bundle in a staging directory, as an earlier transfer left it.
#[derive(Debug)]
pub struct StagedFile {
    /// Where the finished file goes.
    pub dest: PathBuf,
    /// Where it is written meanwhile.
    pub part: PathBuf,
    /// SHA-256 state of the part's first `have` bytes.
    pub hasher: Sha256,
    /// Bytes of the part to continue from.
    pub have: u64,
    /// The file is in place and matches (nothing to fetch).
    pub finished: bool,
}

/// What is already in `staging` for `f` (checked by [`check_files`]), its parent
/// directories created: a finished file that matches is kept (anything else at its place
/// is removed); a part no longer than the file is hashed and continued, a full-length part
/// that matches is renamed into place, other parts are removed. A file of 0 bytes needs no
/// transfer: it is put in place here when the empty digest is the listed one
/// ([`StagingError::HashMismatch`] otherwise).
pub fn resume(staging: &Path, f: &BundleFile) -> Result<StagedFile, StagingError> {
    let dest = staging.join(&f.path);
    let part = staging.join(format!("{}{PART_SUFFIX}", f.path));
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let mut s = StagedFile {
        dest,
        part,
        hasher: Sha256::new(),
        have: 0,
        finished: false,
    };
    if let Ok(meta) = fs::symlink_metadata(&s.dest) {
        if meta.is_file()
            && meta.len() == f.size
            && hex(hash_file(&s.dest, f.size)?.0.finalize()) == f.sha256
        {
            s.finished = true;
            return Ok(s);
        }
        fs::remove_file(&s.dest).map_err(io_err("remove", &s.dest))?;
    }
    match fs::symlink_metadata(&s.part) {
        Ok(meta) if meta.is_file() && meta.len() <= f.size => {
            (s.hasher, s.have) = hash_file(&s.part, f.size)?;
        }
        Ok(_) => remove(&s.part)?,
        Err(_) => {}
    }
    if s.have == f.size {
        let actual = hex(s.hasher.clone().finalize());
        if actual == f.sha256 {
            if f.size == 0 {
                // An empty file: its part is made here (there is nothing to transfer).
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&s.part)
                    .map_err(io_err("create", &s.part))?;
            }
            fs::rename(&s.part, &s.dest).map_err(io_err("rename into place", &s.part))?;
            s.finished = true;
        } else if f.size == 0 {
            remove(&s.part)?;
            return Err(StagingError::HashMismatch {
                file: f.path.clone(),
                expected: f.sha256.clone(),
                actual,
            });
        } else {
            // A full-length part that does not match: leftovers of another bundle.
            remove(&s.part)?;
            (s.hasher, s.have) = (Sha256::new(), 0);
        }
    }
    Ok(s)
}

/// Ends a part that reached its file's size: synced, then renamed into place when its
/// digest (`hasher`, over all of it) is the listed one, else removed
/// ([`StagingError::HashMismatch`]).
pub fn finish(
    s: &StagedFile,
    f: &BundleFile,
    hasher: Sha256,
    out: &fs::File,
) -> Result<(), StagingError> {
    out.sync_all().map_err(io_err("sync", &s.part))?;
    let actual = hex(hasher.finalize());
    if actual != f.sha256 {
        remove(&s.part)?;
        return Err(StagingError::HashMismatch {
            file: f.path.clone(),
            expected: f.sha256.clone(),
            actual,
        });
    }
    fs::rename(&s.part, &s.dest).map_err(io_err("rename into place", &s.part))
}

/// Opens `s`'s part to append at `s.have`: created if missing, never through a link, and
/// refused when its length is not `s.have` (something else changed it).
pub fn open_part(s: &StagedFile) -> Result<fs::File, StagingError> {
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&s.part)
        .map_err(io_err("open", &s.part))?;
    let meta = out.metadata().map_err(io_err("inspect", &s.part))?;
    if !meta.is_file() || meta.len() != s.have {
        return Err(StagingError::Io {
            action: "continue",
            path: s.part.clone(),
            source: io::Error::other(format!(
                "the part is {} bytes, {} expected: something else changed it",
                meta.len(),
                s.have
            )),
        });
    }
    Ok(out)
}

/// The SHA-256 state and length of the first `max` bytes of `path` (not following a
/// symbolic link, not blocking on a FIFO).
fn hash_file(path: &Path, max: u64) -> Result<(Sha256, u64), StagingError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let n = io::copy(&mut file.take(max), &mut hasher).map_err(io_err("read", path))?;
    Ok((hasher, n))
}

/// Removes `path` (already gone is fine).
pub fn remove(path: &Path) -> Result<(), StagingError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StagingError {
    let path = path.to_path_buf();
    move |source| StagingError::Io {
        action,
        path,
        source,
    }
}

/// Lowercase hex of a digest.
pub(crate) fn hex(digest: impl AsRef<[u8]>) -> String {
    use std::fmt::Write as _;
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
