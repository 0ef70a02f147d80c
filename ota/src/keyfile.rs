//! Key files: a header line naming the key type, then base64. Secret files are created
//! `0600` and new (never overwritten), refused when others can read them, and held in
//! zeroizing buffers. Errors are `(path, reason)` for the callers' own error types.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

type Failure = (String, String);

fn fail(path: &Path, reason: impl ToString) -> Failure {
    (path.display().to_string(), reason.to_string())
}

/// The base64 payload of a file whose first line is `header`.
fn payload(path: &Path, text: &str, header: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let b64 = text.strip_prefix(header).ok_or_else(|| {
        fail(
            path,
            format!("wrong key file (first line must be {header:?})"),
        )
    })?;
    B64.decode(b64.trim())
        .map(Zeroizing::new)
        .map_err(|e| fail(path, format!("bad base64: {e}")))
}

/// The file text of a key.
pub fn text(header: &str, bytes: &[u8]) -> String {
    format!("{header}\n{}\n", B64.encode(bytes))
}

/// Reads a public key file.
pub fn read_public(path: &Path, header: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let t = std::fs::read_to_string(path).map_err(|e| fail(path, e))?;
    payload(path, &t, header)
}

/// Writes a secret key file (mode 0600, created new).
pub fn write_secret(path: &Path, header: &str, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = Zeroizing::new(text(header, bytes));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(path, e))?;
    f.write_all(body.as_bytes()).map_err(|e| fail(path, e))?;
    f.sync_all().map_err(|e| fail(path, e))
}

/// Reads a secret key file; refuses one that others can read.
pub fn read_secret(path: &Path, header: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| fail(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(fail(
            path,
            format!(
                "mode {:o}: a secret key must not be readable by others (chmod 600)",
                mode & 0o777
            ),
        ));
    }
    let t = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| fail(path, e))?);
    payload(path, &t, header)
}
