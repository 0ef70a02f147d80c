//! Key files: a header line naming the key type, then base64. Errors are `(path, reason)`
//! for the callers' own error types; every reason says what to do about it.
//!
//! Reading (secret and public alike) works on one descriptor, so what is checked is what is
//! read (no check-then-read race):
//! - the file is opened with `O_NOFOLLOW` (a symbolic link as the last path component is
//!   refused, for public keys too: Debian and Yocto install real files, and a configuration
//!   can name the file itself; directories above the file are the administrator's business),
//!   `O_NONBLOCK` (a FIFO cannot stall the open) and `O_CLOEXEC`;
//! - `fstat` of that descriptor: a regular file, at most [`MAX_KEY_FILE_BYTES`];
//! - owner and mode: a **secret** key must belong to the effective uid of this process
//!   (root-owned when running as root: root never uses another user's key) and have no
//!   group or other permission bits (`chmod 600`); a **public** key (trust roots, issuer and
//!   device keys) must belong to this process's user or to root, and must not be writable by
//!   group or others (`chmod 644`) — a trust anchor that someone else can rewrite is not an
//!   anchor;
//! - the bytes are read from the same descriptor into a zeroizing buffer of the size `fstat`
//!   reported; a file that changes size meanwhile is refused.
//!
//! Writing: secret files are created new (never overwritten) with mode 0600 and the
//! directory is fsynced so the new entry survives a power cut; public files are written
//! 0644 (whatever the umask), so the reader's checks accept them.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

/// The largest key file read (a key file is a header line and at most a few KB of base64).
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

type Failure = (String, String);

fn fail(path: &Path, reason: impl ToString) -> Failure {
    (path.display().to_string(), reason.to_string())
}

/// What a key file holds, and so which owner and mode it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    Public,
}

/// The effective uid of this process.
fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail (POSIX).
    unsafe { libc::geteuid() }
}

/// The base64 payload of a file whose first line is `header`, decoded into a zeroizing
/// buffer (no intermediate copy of the key bytes).
fn payload(path: &Path, text: &str, header: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let b64 = text
        .strip_prefix(header)
        .filter(|rest| rest.starts_with('\n') || rest.starts_with("\r\n"))
        .ok_or_else(|| {
            fail(
                path,
                format!("not this kind of key file (its first line must be {header:?})"),
            )
        })?
        .trim();
    let mut out = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let n = B64
        .decode_slice(b64, &mut out[..])
        .map_err(|e| fail(path, format!("bad base64 after the first line: {e}")))?;
    out.truncate(n);
    Ok(out)
}

/// The file text of a key (public keys: the text is not secret).
pub fn text(header: &str, bytes: &[u8]) -> String {
    format!("{header}\n{}\n", B64.encode(bytes))
}

/// The file text of a secret key, built in one zeroizing buffer (no other copy of the
/// base64 is made).
fn secret_text(header: &str, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let b64_len = base64::encoded_len(bytes.len(), true)
        .ok_or_else(|| "key too large to encode".to_string())?;
    let mut out = Zeroizing::new(vec![0u8; header.len() + 1 + b64_len + 1]);
    out[..header.len()].copy_from_slice(header.as_bytes());
    out[header.len()] = b'\n';
    let start = header.len() + 1;
    let n = B64
        .encode_slice(bytes, &mut out[start..start + b64_len])
        .map_err(|e| e.to_string())?;
    debug_assert_eq!(n, b64_len);
    out[start + b64_len] = b'\n';
    Ok(out)
}

/// Opens a key file without following a symbolic link, checks the opened descriptor and
/// reads it whole into a zeroizing buffer.
fn read_checked(path: &Path, kind: Kind) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(path, open_error(&e)))?;
    let meta = f
        .metadata()
        .map_err(|e| fail(path, format!("cannot stat the opened file: {e}")))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device node"
            } else {
                "not a plain file"
            }
        };
        return Err(fail(
            path,
            format!("is {what}, not a regular file: name the key file itself"),
        ));
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(fail(
            path,
            format!(
                "is {} bytes; a key file is at most {MAX_KEY_FILE_BYTES} bytes: is this the \
                 right file?",
                meta.len()
            ),
        ));
    }
    check_owner_and_mode(path, kind, meta.uid(), meta.permissions().mode())?;
    // Read exactly what fstat reported (+1 byte to notice growth), from this descriptor.
    let len = usize::try_from(meta.len()).map_err(|_| fail(path, "file size"))?;
    let mut buf = Zeroizing::new(vec![0u8; len + 1]);
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(path, format!("read failed: {e}"))),
        }
    }
    if n != len {
        return Err(fail(
            path,
            "changed size while it was being read: write key files once, then read them",
        ));
    }
    buf.truncate(n);
    Ok(buf)
}

const SYMLINK: &str = "is a symbolic link; key files are opened without following links: \
     name the file itself in the configuration (see `readlink -f`) or replace the link with \
     the file";

/// The reason an open failed, with what to do about it.
fn open_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => SYMLINK.into(),
        Some(libc::EACCES) => format!(
            "permission denied for this process (uid {}): a key file must be readable by \
             the user that uses it (chown that user, or run as its owner)",
            euid()
        ),
        Some(libc::ENOENT) => "no such file".into(),
        _ => e.to_string(),
    }
}

/// Owner and permission rules (see the module documentation).
fn check_owner_and_mode(path: &Path, kind: Kind, uid: u32, mode: u32) -> Result<(), Failure> {
    let me = euid();
    match kind {
        Kind::Secret => {
            if uid != me {
                return Err(fail(
                    path,
                    format!(
                        "is owned by uid {uid}, but this process runs as uid {me}: a secret key \
                         must belong to the user that uses it (chown {me} {p}, or run as its \
                         owner)",
                        p = path.display()
                    ),
                ));
            }
            if mode & 0o077 != 0 {
                return Err(fail(
                    path,
                    format!(
                        "mode {:04o}: a secret key must not be accessible to group or others \
                         (chmod 600 {})",
                        mode & 0o7777,
                        path.display()
                    ),
                ));
            }
        }
        Kind::Public => {
            if uid != me && uid != 0 {
                return Err(fail(
                    path,
                    format!(
                        "is owned by uid {uid}: a trusted public key file must belong to root or \
                         to this process's user (uid {me}), or its owner could replace it \
                         (chown root {})",
                        path.display()
                    ),
                ));
            }
            if mode & 0o022 != 0 {
                return Err(fail(
                    path,
                    format!(
                        "mode {:04o}: a public key file writable by group or others can be \
                         replaced by them (chmod 644 {})",
                        mode & 0o7777,
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Reads a public key file (see the module documentation for the checks).
pub fn read_public(path: &Path, header: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let bytes = read_checked(path, Kind::Public)?;
    let t = std::str::from_utf8(&bytes).map_err(|_| fail(path, "not UTF-8 text"))?;
    payload(path, t, header)
}

/// Reads a secret key file (see the module documentation for the checks); the file's bytes
/// and the decoded key live only in zeroizing buffers.
pub fn read_secret(path: &Path, header: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let bytes = read_checked(path, Kind::Secret)?;
    let t = std::str::from_utf8(&bytes).map_err(|_| fail(path, "not UTF-8 text"))?;
    payload(path, t, header)
}

/// Fsyncs the directory holding `path`, so a new entry survives a power cut.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes a secret key file: created new (never overwrites, never follows a link), mode
/// 0600, file and directory fsynced. A partly written file is removed.
pub fn write_secret(path: &Path, header: &str, bytes: &[u8]) -> Result<(), Failure> {
    let body = secret_text(header, bytes).map_err(|e| fail(path, e))?;
    write_private(path, &body)
}

/// Reads a private file (a secret key, the agent's local API token) with the secret-key
/// checks: one descriptor, no link, a regular file of at most [`MAX_KEY_FILE_BYTES`], owned
/// by this process's user, no group or other permission bits.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    read_checked(path, Kind::Secret)
}

/// Writes a private file: created new (never overwrites, never follows a link), mode 0600,
/// file and directory fsynced. A partly written file is removed.
pub fn write_private(path: &Path, body: &[u8]) -> Result<(), Failure> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                fail(
                    path,
                    "already exists: a key file is never overwritten (move it away first if \
                     you mean to replace it)",
                )
            } else {
                fail(path, e)
            }
        })?;
    let written = f
        .write_all(body)
        .and_then(|()| f.sync_all())
        .and_then(|()| sync_dir(path));
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(fail(path, format!("writing the key failed: {e}")));
    }
    Ok(())
}

/// Writes a public key file with mode 0644 whatever the umask (replacing an existing file,
/// never through a symbolic link), so [`read_public`]'s checks accept it.
pub fn write_public(path: &Path, text: &str) -> Result<(), Failure> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => fail(path, SYMLINK),
            _ => fail(path, e),
        })?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| fail(path, e))
}
