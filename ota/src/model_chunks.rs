//! The MQTT chunk transfer of a model bundle, without the MQTT: the gateway's
//! [`ChunkServer`] answers one [`FetchRequest`] with one chunk message, and the device's
//! [`ChunkFetcher`] decides what to ask for next, checks what comes back and stages the
//! files. Both are sans-IO as far as the network goes (bytes in, bytes out; the caller owns
//! the broker connection, the topics of [`crate::model_wire`] and the clock), so the same
//! code runs in `chimera model publish --serve`, in the agent's fleet link and in tests
//! that pump one into the other in memory.
//!
//! Why it exists: some devices reach only the broker, and a broker message is at most
//! 128 KB (AWS IoT Core's limit). The device asks for one piece of one file at a time
//! (`aegis/v1/{device}/ota/fetch`), a few pieces in flight; the gateway answers each on
//! `aegis/v1/{device}/ota/chunk` with the piece and its SHA-256. The transfer resumes
//! after a broken connection (requests still outstanding are asked again) and after a
//! restart (the `.part` files are hashed and continued), exactly as the HTTP downloader
//! does (`aegis_agent::models_ota::download`): same file names, same `.part` suffix, a
//! file renamed into place only when complete and matching the signed manifest.
//!
//! What it must not do:
//! - the server must never read outside the bundle directory, follow a symbolic link
//!   (every component is opened with `openat(2)` and `O_NOFOLLOW` under the directory's
//!   descriptor, held from the start), or serve anything but exactly a listed file of its
//!   name and version, at an offset inside it;
//! - the fetcher must never write a chunk it did not ask for, grow a file past its listed
//!   size, or put a file in place whose SHA-256 is not the manifest's (the chunk's own
//!   SHA-256 only catches transport damage early; the manifest decides).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::model::{BundleError, BundleFile, ModelManifest, check_file_path, check_name};
use crate::model_wire::{ChunkHeader, FetchRequest, MAX_CHUNK_DATA, decode_chunk, encode_chunk};
use crate::staging::{self, StagedFile, StagingError};

/// Suffix of a file being transferred, next to where the finished file goes (the HTTP
/// downloader's too, so either transfer resumes the other's part).
pub use crate::staging::PART_SUFFIX;
/// Chunks a fetcher keeps in flight by default (asked for, or arrived ahead of a gap).
pub const DEFAULT_WINDOW: usize = 4;
/// Most chunks a fetcher keeps in flight (so at most this many chunks are held in memory).
pub const MAX_WINDOW: usize = 64;
/// Largest fetch request accepted (JSON): a name of 64 bytes and a path of 255 fit many
/// times over.
pub const MAX_FETCH_REQUEST: usize = 1024;

/// Parses a fetch request (what the gateway reads on a device's fetch topic): size first,
/// then JSON with unknown and duplicate fields refused, then the name rule of model names
/// and the path rule of bundle files (so an answer echoing them stays small and plain).
/// Whether the gateway serves it is [`ChunkServer::answer`]'s decision.
pub fn parse_fetch_request(bytes: &[u8]) -> Result<FetchRequest, String> {
    if bytes.len() > MAX_FETCH_REQUEST {
        return Err(format!(
            "a fetch request is at most {MAX_FETCH_REQUEST} bytes; this one is {}",
            bytes.len()
        ));
    }
    let r: FetchRequest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a fetch request: {e}"))?;
    check_name(&r.name).map_err(|e| format!("fetch request: {e}"))?;
    check_file_path(&r.file).map_err(|e| format!("fetch request: file {:?} {e}", r.file))?;
    Ok(r)
}

/// The JSON a device sends on its fetch topic.
pub fn fetch_request_json(r: &FetchRequest) -> Vec<u8> {
    serde_json::to_vec(r).expect("a fetch request serialises")
}

// ---------------------------------------------------------------------------------------
// Gateway side.

/// Serves the files of one bundle (name, version, files of its manifest) from a directory.
///
/// The directory is opened once, at construction, and every file is reached from that
/// descriptor one component at a time with `O_NOFOLLOW` (a directory component also with
/// `O_DIRECTORY`): a symbolic link anywhere, an unlisted path or a file whose size on disk
/// is not the listed one is answered with an error, never served. Contents are not hashed
/// per request (the gateway checks its bundle before announcing it, see
/// [`crate::model::check_bundle_dir`]; a file changed since is caught by the device's hash
/// of the whole file).
#[derive(Debug)]
pub struct ChunkServer {
    root: File,
    name: String,
    version: u64,
    files: BTreeMap<String, BundleFile>,
    total: u64,
}

/// One answer of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The chunk message to publish on the device's chunk topic (data, or an error answer).
    pub message: Vec<u8>,
    /// Bytes served, or why the request was refused (the text of the error answer).
    pub served: Result<u64, String>,
}

impl ChunkServer {
    /// A server for `manifest`'s files in `dir`. Fails when `dir` cannot be opened as a
    /// directory (a symbolic link included) or a listed path breaks the path rule.
    pub fn new(dir: &Path, manifest: &ModelManifest) -> Result<ChunkServer, BundleError> {
        if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(BundleError::Directory {
                dir: dir.to_path_buf(),
                reason: "a symbolic link; give the directory itself".into(),
            });
        }
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| BundleError::Directory {
                dir: dir.to_path_buf(),
                reason: match e.raw_os_error() {
                    Some(libc::ELOOP) => "a symbolic link; give the directory itself".into(),
                    Some(libc::ENOTDIR) => "not a directory".into(),
                    _ => e.to_string(),
                },
            })?;
        let mut files = BTreeMap::new();
        let mut total = 0u64;
        for f in &manifest.files {
            check_file_path(&f.path).map_err(|reason| BundleError::UnsafePath {
                path: f.path.clone(),
                reason,
            })?;
            total = total.saturating_add(f.size);
            files.insert(f.path.clone(), f.clone());
        }
        Ok(ChunkServer {
            root,
            name: manifest.name.clone(),
            version: manifest.version,
            files,
            total,
        })
    }

    /// The model name served.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version served.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bytes of the whole bundle.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The listed size of `file` (None: not a file of this bundle).
    pub fn file_size(&self, file: &str) -> Option<u64> {
        self.files.get(file).map(|f| f.size)
    }

    /// Answers one request (as [`parse_fetch_request`] returned it): `min(length, size -
    /// offset)` bytes of the file from `offset`, or an error answer echoing the request's
    /// name, version, file and offset (so the device can match it) when the request is not
    /// exactly for a listed file of this name and version, its offset is not inside the
    /// file, its length is 0 or above [`MAX_CHUNK_DATA`], or the file on disk cannot be
    /// served (a symbolic link, not a regular file, not the listed size, unreadable).
    pub fn answer(&self, req: &FetchRequest) -> Answer {
        match self.read(req) {
            Ok(data) => {
                let header = ChunkHeader {
                    name: req.name.clone(),
                    version: req.version,
                    file: req.file.clone(),
                    offset: req.offset,
                    sha256: crate::sha256_hex(&data),
                    error: None,
                };
                Answer {
                    message: encode_chunk(&header, &data),
                    served: Ok(data.len() as u64),
                }
            }
            Err(reason) => {
                let header = ChunkHeader {
                    name: req.name.clone(),
                    version: req.version,
                    file: req.file.clone(),
                    offset: req.offset,
                    sha256: String::new(),
                    error: Some(reason.clone()),
                };
                Answer {
                    message: encode_chunk(&header, &[]),
                    served: Err(reason),
                }
            }
        }
    }

    fn read(&self, req: &FetchRequest) -> Result<Vec<u8>, String> {
        if req.name != self.name || req.version != self.version {
            return Err(format!(
                "this gateway serves {} version {}, not {} version {}",
                self.name, self.version, req.name, req.version
            ));
        }
        let Some(f) = self.files.get(&req.file) else {
            return Err(format!(
                "{:?} is not a file of {} version {}",
                req.file, self.name, self.version
            ));
        };
        if req.length == 0 || req.length > MAX_CHUNK_DATA {
            return Err(format!(
                "length {}: a chunk is 1 to {MAX_CHUNK_DATA} bytes",
                req.length
            ));
        }
        if req.offset >= f.size {
            return Err(format!(
                "offset {} is not inside {} ({} bytes)",
                req.offset, f.path, f.size
            ));
        }
        let file = open_in(&self.root, &f.path).map_err(|e| {
            format!(
                "{} cannot be served: {}",
                f.path,
                match e.raw_os_error() {
                    Some(libc::ELOOP) => "a symbolic link on the gateway".to_string(),
                    Some(libc::ENOTDIR) =>
                        "a directory on its path is not one (or is a symbolic link)".into(),
                    _ => e.to_string(),
                }
            )
        })?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{} cannot be served: {e}", f.path))?;
        if !meta.is_file() {
            return Err(format!(
                "{} cannot be served: not a regular file on the gateway",
                f.path
            ));
        }
        if meta.len() != f.size {
            return Err(format!(
                "{} is {} bytes on the gateway, the manifest says {}",
                f.path,
                meta.len(),
                f.size
            ));
        }
        // Within MAX_CHUNK_DATA: fits usize.
        let n = req.length.min(f.size - req.offset) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, req.offset)
            .map_err(|e| format!("{} at {}: {e}", f.path, req.offset))?;
        Ok(buf)
    }
}

/// `openat(2)` of one path component under `dir`, with `O_NOFOLLOW | O_CLOEXEC` added.
fn openat(dir: &File, name: &str, flags: libc::c_int) -> io::Result<File> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))?;
    // SAFETY: `dir` is a live `File`, so its descriptor stays open for the call; `c` is a
    // NUL-terminated string that outlives the call; openat(2) only reads them.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat(2): an open descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens bundle path `path` (already checked by [`check_file_path`]: relative, plain
/// components) under `root`, never following a symbolic link at any level.
fn open_in(root: &File, path: &str) -> io::Result<File> {
    let parts: Vec<&str> = path.split('/').collect();
    let (leaf, dirs) = parts
        .split_last()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an empty path"))?;
    let mut held: Option<File> = None;
    for d in dirs {
        let next = openat(
            held.as_ref().unwrap_or(root),
            d,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        held = Some(next);
    }
    // O_NONBLOCK: a FIFO planted in the bundle must not block the gateway (it is then
    // refused as not a regular file).
    openat(
        held.as_ref().unwrap_or(root),
        leaf,
        libc::O_RDONLY | libc::O_NONBLOCK,
    )
}

// ---------------------------------------------------------------------------------------
// Device side.

/// How far a transfer is.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The first file not finished yet (None: all are).
    pub file: Option<String>,
    /// Bytes of the bundle on disk so far (resumed parts and kept files included).
    pub done: u64,
    /// Bytes of the whole bundle.
    pub total: u64,
    /// `done` as a percentage of `total` (100 for an empty bundle).
    pub percent: f64,
    /// Files finished (verified and in place).
    pub files_done: usize,
    /// Files in the bundle.
    pub files: usize,
    /// Messages ignored so far (damaged, foreign, duplicated or not asked for).
    pub ignored: u64,
}

/// Why a chunk transfer failed. Construction errors come before anything is written; an
/// error from [`ChunkFetcher::on_chunk`] ends the transfer (the fetcher asks for nothing
/// more): parts that can still become their file are kept for a later fetcher to resume,
/// a part that cannot (wrong hash) is removed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The gateway answered a request of ours with an error; the parts are kept.
    #[error("the gateway refused {file:?} at byte {offset}: {reason}")]
    Refused {
        /// The bundle path.
        file: String,
        /// The offset asked for.
        offset: u64,
        /// The gateway's reason.
        reason: String,
    },
    /// A chunk after the transfer had already failed.
    #[error("the transfer stopped after an earlier error")]
    Stopped,
    /// A staging rule or file-system operation (bad path or digest, a complete file with
    /// the wrong hash, I/O).
    #[error(transparent)]
    Staging(#[from] StagingError),
}

/// A chunk asked for (or about to be).
#[derive(Debug, Clone, Copy)]
struct Pending {
    length: u64,
    /// Sent (false: [`ChunkFetcher::next_requests`] sends it next).
    asked: bool,
}

/// One file being staged.
#[derive(Debug)]
struct Staged {
    file: BundleFile,
    s: StagedFile,
}

/// The device side of a chunk transfer: stages a verified manifest's files into a
/// directory from chunk messages, asking for a few chunks at a time in file order.
///
/// Driving it: send [`next_requests`](Self::next_requests) (as
/// [`fetch_request_json`]) on the fetch topic; hand every message of the chunk topic to
/// [`on_chunk`](Self::on_chunk), then send `next_requests` again; when nothing arrived
/// for a while, or after the connection came back, call
/// [`on_timeout`](Self::on_timeout) and send `next_requests` (the chunks still outstanding,
/// asked again). Done when [`is_done`](Self::is_done). File I/O happens in `new` and
/// `on_chunk` (blocking, at most one chunk written per call plus the ones it releases).
///
/// Rules, the HTTP downloader's (both use [`crate::staging`]): paths pass
/// [`check_file_path`], no `.part` names, none twice, digests are 64 lowercase hex digits,
/// before anything is touched; each file
/// is written to `<path>.part` in order, hashed as it is written, and renamed into place
/// only when complete and matching; a mismatch removes the part and fails naming the
/// file. On construction a finished file that matches is kept, an existing part is hashed
/// and continued from its length (a part longer than the file, or full-length and wrong,
/// is dropped). The part is synced when its file completes, not per chunk: after a power
/// loss a part may end in garbage, which the file's hash catches (the file is then fetched
/// again).
///
/// A message is ignored (counted, never written) when it does not decode (damaged), is for
/// another name or version or a file not in the bundle, is not a chunk outstanding (a
/// duplicate, a stale answer to a re-asked request, or one never asked for), or does not
/// carry exactly the length asked. A chunk that arrives ahead of a gap is held in memory
/// (at most the window) and written when the gap fills.
#[derive(Debug)]
pub struct ChunkFetcher {
    name: String,
    version: u64,
    files: Vec<Staged>,
    window: usize,
    chunk_len: u64,
    /// The next chunk not yet put in `pending`: (file index, offset).
    next: (usize, u64),
    /// Chunks asked for (or about to be) and not arrived: (file index, offset) → length.
    pending: BTreeMap<(usize, u64), Pending>,
    /// Chunks arrived ahead of their file's end, waiting for the gap to fill.
    held: BTreeMap<(usize, u64), Vec<u8>>,
    done: u64,
    total: u64,
    ignored: u64,
    last_ignored: Option<String>,
    failed: bool,
}

impl ChunkFetcher {
    /// A fetcher for bundle `name` `version` whose files are `files` (a verified manifest's
    /// `files`), staging into `staging` (created if missing). Resumes what an earlier
    /// transfer (HTTP or MQTT) left there. Window [`DEFAULT_WINDOW`], chunks of
    /// [`MAX_CHUNK_DATA`] bytes.
    pub fn new(
        name: &str,
        version: u64,
        files: &[BundleFile],
        staging: &Path,
    ) -> Result<ChunkFetcher, ChunkError> {
        let total = staging::check_files(files)?;
        fs::create_dir_all(staging).map_err(|source| StagingError::Io {
            action: "create",
            path: staging.to_path_buf(),
            source,
        })?;
        let mut staged = Vec::with_capacity(files.len());
        let mut done = 0u64;
        for f in files {
            let s = staging::resume(staging, f)?;
            done += if s.finished { f.size } else { s.have };
            staged.push(Staged { file: f.clone(), s });
        }
        let mut fetcher = ChunkFetcher {
            name: name.to_owned(),
            version,
            files: staged,
            window: DEFAULT_WINDOW,
            chunk_len: MAX_CHUNK_DATA,
            next: (0, 0),
            pending: BTreeMap::new(),
            held: BTreeMap::new(),
            done,
            total,
            ignored: 0,
            last_ignored: None,
            failed: false,
        };
        fetcher.next = (0, fetcher.files.first().map_or(0, |s| s.s.have));
        Ok(fetcher)
    }

    /// The same with `window` chunks in flight (1 to [`MAX_WINDOW`]). Call before the first
    /// [`next_requests`](Self::next_requests).
    pub fn with_window(mut self, window: usize) -> ChunkFetcher {
        self.window = window.clamp(1, MAX_WINDOW);
        self
    }

    /// The same asking for chunks of `len` bytes (1 to [`MAX_CHUNK_DATA`]). Call before the
    /// first [`next_requests`](Self::next_requests).
    pub fn with_chunk_len(mut self, len: u64) -> ChunkFetcher {
        self.chunk_len = len.clamp(1, MAX_CHUNK_DATA);
        self
    }

    /// The model name fetched.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version fetched.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every file is staged, verified and in place.
    pub fn is_done(&self) -> bool {
        self.files.iter().all(|s| s.s.finished)
    }

    /// An error ended the transfer.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Chunks asked for and not arrived yet (those [`on_timeout`](Self::on_timeout) marked
    /// to be asked again included).
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Why the last ignored message was ignored (for a log line).
    pub fn last_ignored(&self) -> Option<&str> {
        self.last_ignored.as_deref()
    }

    /// Where the transfer is.
    pub fn progress(&self) -> Progress {
        let percent = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        Progress {
            file: self
                .files
                .iter()
                .find(|s| !s.s.finished)
                .map(|s| s.file.path.clone()),
            done: self.done,
            total: self.total,
            percent,
            files_done: self.files.iter().filter(|s| s.s.finished).count(),
            files: self.files.len(),
            ignored: self.ignored,
        }
    }

    /// The requests to send now: new chunks, in file order, until the window is full
    /// (chunks asked for plus chunks held count against it), and the outstanding ones that
    /// [`on_timeout`](Self::on_timeout) marked to be asked again. Empty when nothing is to
    /// be sent (done, failed, or the window is full).
    pub fn next_requests(&mut self) -> Vec<FetchRequest> {
        if self.failed {
            return Vec::new();
        }
        while self.pending.len() + self.held.len() < self.window {
            let Some((i, offset, length)) = self.advance() else {
                break;
            };
            self.pending.insert(
                (i, offset),
                Pending {
                    length,
                    asked: false,
                },
            );
        }
        let mut out = Vec::new();
        for (&(i, offset), p) in self.pending.iter_mut().filter(|(_, p)| !p.asked) {
            p.asked = true;
            out.push(FetchRequest {
                name: self.name.clone(),
                version: self.version,
                file: self.files[i].file.path.clone(),
                offset,
                length: p.length,
            });
        }
        out
    }

    /// Nothing came for a while (or the connection came back): every chunk outstanding is
    /// asked again by the next [`next_requests`](Self::next_requests). A late answer to the
    /// first request and the answer to the second are then both accepted once: the first
    /// to arrive is written, the other ignored as a duplicate.
    pub fn on_timeout(&mut self) {
        for p in self.pending.values_mut() {
            p.asked = false;
        }
    }

    /// Handles one message from the chunk topic. `Ok` with the progress when it was
    /// written, held or ignored (see the type's rules); `Err` ends the transfer: an error
    /// answer to a request of ours ([`ChunkError::Refused`]), a complete file with the
    /// wrong hash ([`StagingError::HashMismatch`], part removed), or a staging I/O error.
    pub fn on_chunk(&mut self, msg: &[u8]) -> Result<Progress, ChunkError> {
        if self.failed {
            return Err(ChunkError::Stopped);
        }
        let (header, data) = match decode_chunk(msg) {
            Ok(x) => x,
            Err(e) => return Ok(self.ignore(format!("not a valid chunk: {e}"))),
        };
        if header.name != self.name || header.version != self.version {
            return Ok(self.ignore(format!(
                "a chunk of {} version {}, not of {} version {}",
                header.name, header.version, self.name, self.version
            )));
        }
        let Some(i) = self.files.iter().position(|s| s.file.path == header.file) else {
            return Ok(self.ignore(format!(
                "a chunk of {:?}, not a file of this bundle",
                header.file
            )));
        };
        let key = (i, header.offset);
        let Some(pending) = self.pending.get(&key).copied() else {
            return Ok(self.ignore(format!(
                "{} at {} is not outstanding (a duplicate, or never asked for)",
                header.file, header.offset
            )));
        };
        if let Some(reason) = header.error {
            self.failed = true;
            return Err(ChunkError::Refused {
                file: header.file,
                offset: header.offset,
                reason,
            });
        }
        if data.len() as u64 != pending.length {
            return Ok(self.ignore(format!(
                "{} at {}: {} bytes where {} were asked",
                header.file,
                header.offset,
                data.len(),
                pending.length
            )));
        }
        self.pending.remove(&key);
        if header.offset != self.files[i].s.have {
            self.held.insert(key, data.to_vec());
            return Ok(self.progress());
        }
        let result = self.write(i, data).and_then(|()| {
            while let Some(d) = self.held.remove(&(i, self.files[i].s.have)) {
                self.write(i, &d)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.failed = true;
            return Err(e);
        }
        Ok(self.progress())
    }

    fn ignore(&mut self, why: String) -> Progress {
        self.ignored += 1;
        self.last_ignored = Some(why);
        self.progress()
    }

    /// The chunk at `next` (file index, offset, length), moving `next` past it; None when
    /// every chunk has been put in `pending`.
    fn advance(&mut self) -> Option<(usize, u64, u64)> {
        while let Some(s) = self.files.get(self.next.0) {
            if s.s.finished || self.next.1 >= s.file.size {
                let i = self.next.0 + 1;
                self.next = (i, self.files.get(i).map_or(0, |s| s.s.have));
                continue;
            }
            let at = self.next;
            let length = self.chunk_len.min(s.file.size - at.1);
            self.next.1 += length;
            return Some((at.0, at.1, length));
        }
        None
    }

    /// Appends `data` to file `i`'s part at its end; a file that becomes complete is
    /// checked and renamed into place (or its part removed).
    fn write(&mut self, i: usize, data: &[u8]) -> Result<(), ChunkError> {
        let Staged { file, s } = &mut self.files[i];
        debug_assert!(data.len() as u64 <= file.size - s.have);
        let out = staging::open_part(s)?;
        out.write_all_at(data, s.have)
            .map_err(|source| StagingError::Io {
                action: "write",
                path: s.part.clone(),
                source,
            })?;
        s.hasher.update(data);
        s.have += data.len() as u64;
        self.done += data.len() as u64;
        if s.have == file.size {
            let r = staging::finish(s, file, s.hasher.clone(), &out);
            if let Err(StagingError::HashMismatch { .. }) = &r {
                // The part is gone: the file starts again at 0.
                self.done -= s.have;
                (s.have, s.hasher) = (0, Sha256::new());
            }
            r?;
            s.finished = true;
        }
        Ok(())
    }
}
