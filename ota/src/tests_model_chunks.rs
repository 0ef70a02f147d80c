//! The chunk transfer in memory: a real [`ChunkServer`] on a real bundle directory pumped
//! into a real [`ChunkFetcher`] staging into another, with the messages between them
//! dropped, duplicated, reordered, damaged or forged on the way.

use std::path::Path;

use crate::model::*;
use crate::model_chunks::*;
use crate::model_wire::{ChunkHeader, FetchRequest, MAX_CHUNK_DATA, decode_chunk, encode_chunk};

/// Small chunks so that small files span many of them.
const CHUNK: u64 = 1000;

/// Deterministic bytes (xorshift), different per seed.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn file(path: &str, data: &[u8]) -> BundleFile {
    BundleFile {
        path: path.into(),
        sha256: crate::sha256_hex(data),
        size: data.len() as u64,
    }
}

/// The bundle: a model of 5.4 chunks, labels, a nested input, an empty file.
fn contents() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("model.onnx", bytes(1, 5 * CHUNK as usize + 417)),
        ("labels.txt", b"person\ncar\n".to_vec()),
        ("health/input.bin", bytes(2, 2 * CHUNK as usize)),
        ("empty.txt", Vec::new()),
    ]
}

fn manifest(files: Vec<BundleFile>) -> ModelManifest {
    ModelManifest::example("moderation", 3, files)
}

struct World {
    _tmp: tempfile::TempDir,
    bundle: std::path::PathBuf,
    staging: std::path::PathBuf,
    manifest: ModelManifest,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let mut files = Vec::new();
    for (p, data) in contents() {
        let path = bundle.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        files.push(file(p, &data));
    }
    let m = manifest(files);
    m.validate().unwrap();
    World {
        staging: tmp.path().join("staging"),
        bundle,
        manifest: m,
        _tmp: tmp,
    }
}

impl World {
    fn server(&self) -> ChunkServer {
        ChunkServer::new(&self.bundle, &self.manifest).unwrap()
    }

    fn fetcher(&self) -> ChunkFetcher {
        ChunkFetcher::new(
            &self.manifest.name,
            self.manifest.version,
            &self.manifest.files,
            &self.staging,
        )
        .unwrap()
        .with_chunk_len(CHUNK)
    }

    /// The staged directory holds exactly the bundle (no part left).
    fn staged_ok(&self) {
        check_bundle_dir(&self.staging, &self.manifest.files).unwrap();
    }
}

/// Every request answered in order, until done; returns the number of requests.
fn pump(server: &ChunkServer, f: &mut ChunkFetcher) -> Result<usize, ChunkError> {
    let mut asked = 0;
    while !f.is_done() {
        let reqs = f.next_requests();
        assert!(
            !reqs.is_empty(),
            "not done, yet nothing to ask: {:?}",
            f.progress()
        );
        for r in reqs {
            asked += 1;
            // Through the wire format, as over MQTT.
            let r = parse_fetch_request(&fetch_request_json(&r)).unwrap();
            f.on_chunk(&server.answer(&r).message)?;
        }
    }
    Ok(asked)
}

fn chunks_of(m: &ModelManifest) -> usize {
    m.files
        .iter()
        .map(|f| f.size.div_ceil(CHUNK) as usize)
        .sum()
}

#[test]
fn a_bundle_round_trips_in_chunks_within_the_window() {
    let w = world();
    let server = w.server();
    let mut f = w.fetcher();
    assert_eq!(f.progress().files_done, 1, "the empty file needs no chunk");
    let mut asked = 0;
    let mut high = 0;
    while !f.is_done() {
        let reqs = f.next_requests();
        asked += reqs.len();
        high = high.max(f.outstanding());
        assert!(f.outstanding() <= DEFAULT_WINDOW);
        for r in reqs {
            assert!(r.length <= CHUNK && r.length > 0);
            let p = f.on_chunk(&server.answer(&r).message).unwrap();
            assert!(p.done <= p.total);
        }
    }
    assert_eq!(asked, chunks_of(&w.manifest), "each chunk asked once");
    assert_eq!(high, DEFAULT_WINDOW, "the window was used");
    let p = f.progress();
    assert_eq!((p.done, p.total, p.percent), (p.total, 7_428, 100.0));
    assert_eq!((p.files_done, p.files, p.ignored, p.file), (4, 4, 0, None));
    assert!(f.next_requests().is_empty());
    w.staged_ok();
    for (path, data) in contents() {
        assert_eq!(std::fs::read(w.staging.join(path)).unwrap(), data, "{path}");
    }
}

#[test]
fn full_size_chunks_stay_within_the_wire_limit() {
    let w = world();
    let big = bytes(9, 2 * MAX_CHUNK_DATA as usize + 5);
    std::fs::write(w.bundle.join("model.onnx"), &big).unwrap();
    let mut m = w.manifest.clone();
    m.files[0] = file("model.onnx", &big);
    let server = ChunkServer::new(&w.bundle, &m).unwrap();
    let mut f = ChunkFetcher::new(&m.name, m.version, &m.files, &w.staging).unwrap();
    let reqs = f.next_requests();
    assert_eq!(reqs[0].length, MAX_CHUNK_DATA);
    let a = server.answer(&reqs[0]);
    assert!(a.message.len() < 128 * 1024, "{}", a.message.len());
    f.on_chunk(&a.message).unwrap();
    for r in reqs[1..].iter() {
        f.on_chunk(&server.answer(r).message).unwrap();
    }
    pump(&server, &mut f).unwrap();
    check_bundle_dir(&w.staging, &m.files).unwrap();
}

#[test]
fn duplicated_reordered_and_foreign_chunks_are_ignored_or_held_never_misplaced() {
    let w = world();
    let server = w.server();
    let mut f = w.fetcher();
    let mut ignored = 0;
    while !f.is_done() {
        let reqs = f.next_requests();
        let mut answers: Vec<Vec<u8>> = reqs.iter().map(|r| server.answer(r).message).collect();
        answers.reverse();
        let before = f.progress().done;
        // All but the first (in file order) arrive: held behind it when they are of its
        // file (a chunk at the start of the next file is written at once).
        let one_file = reqs.iter().all(|r| r.file == reqs[0].file);
        for a in &answers[..answers.len() - 1] {
            let p = f.on_chunk(a).unwrap();
            if one_file {
                assert_eq!(p.done, before, "written ahead of a gap");
            }
        }
        let before_first = f.progress().done;
        // Foreign: another version, another name, a file not in the bundle, an offset
        // not asked for — each answered by a server that would serve it.
        let r = &reqs[0];
        let mut other = w.manifest.clone();
        other.version = 4;
        let v4 = ChunkServer::new(&w.bundle, &other).unwrap();
        for foreign in [
            v4.answer(&FetchRequest {
                version: 4,
                ..r.clone()
            })
            .message,
            encode_chunk(
                &ChunkHeader {
                    name: "other".into(),
                    sha256: crate::sha256_hex(b"x"),
                    ..header_of(r)
                },
                b"x",
            ),
            encode_chunk(
                &ChunkHeader {
                    file: "secret.txt".into(),
                    sha256: crate::sha256_hex(b"x"),
                    ..header_of(r)
                },
                b"x",
            ),
            encode_chunk(
                &ChunkHeader {
                    offset: r.offset + 1,
                    sha256: crate::sha256_hex(b"x"),
                    ..header_of(r)
                },
                b"x",
            ),
        ] {
            let p = f.on_chunk(&foreign).unwrap();
            ignored += 1;
            assert_eq!((p.done, p.ignored), (before_first, ignored));
        }
        // The first arrives: it and every held one are written.
        let last = answers.last().unwrap();
        let p = f.on_chunk(last).unwrap();
        let got: u64 = reqs.iter().map(|r| r.length).sum();
        assert_eq!(p.done, before + got);
        // Everything again: duplicates, ignored.
        for a in &answers {
            ignored += 1;
            assert_eq!(f.on_chunk(a).unwrap().ignored, ignored);
        }
        assert!(f.last_ignored().unwrap().contains("not outstanding"));
    }
    w.staged_ok();
}

fn header_of(r: &FetchRequest) -> ChunkHeader {
    ChunkHeader {
        name: r.name.clone(),
        version: r.version,
        file: r.file.clone(),
        offset: r.offset,
        sha256: String::new(),
        error: None,
    }
}

#[test]
fn damaged_or_short_chunks_are_ignored_and_asked_again_after_a_timeout() {
    let w = world();
    let server = w.server();
    let mut f = w.fetcher();
    let reqs = f.next_requests();
    let mut msg = server.answer(&reqs[0]).message;
    *msg.last_mut().unwrap() ^= 0x40;
    let p = f.on_chunk(&msg).unwrap();
    assert_eq!((p.done, p.ignored), (0, 1));
    assert!(
        f.last_ignored().unwrap().contains("damaged"),
        "{:?}",
        f.last_ignored()
    );
    // A shorter chunk than asked, intact: not what was asked, ignored.
    let r = &reqs[0];
    let good = server.answer(r).message;
    let (h, data) = decode_chunk(&good).unwrap();
    let short = encode_chunk(
        &ChunkHeader {
            sha256: crate::sha256_hex(&data[..10]),
            ..h
        },
        &data[..10],
    );
    assert_eq!(f.on_chunk(&short).unwrap().done, 0);
    assert!(f.last_ignored().unwrap().contains("were asked"));
    for bad in [
        &b""[..],
        b"AEGC",
        b"AEGC\xff\xff\xff\xff",
        &good[..good.len() - 1],
    ] {
        f.on_chunk(bad).unwrap();
    }
    // The others arrive; the window is full, nothing new is asked.
    for r in &reqs[1..] {
        f.on_chunk(&server.answer(r).message).unwrap();
    }
    assert_eq!(f.progress().done, 0, "held behind the missing first chunk");
    assert!(f.next_requests().is_empty());
    assert_eq!(f.outstanding(), 1);
    f.on_timeout();
    let again = f.next_requests();
    assert_eq!(
        again,
        vec![reqs[0].clone()],
        "exactly the outstanding one, again"
    );
    f.on_chunk(&server.answer(&again[0]).message).unwrap();
    assert_eq!(
        f.progress().done,
        reqs.iter().map(|r| r.length).sum::<u64>()
    );
    pump(&server, &mut f).unwrap();
    w.staged_ok();
}

#[test]
fn a_file_changed_on_the_gateway_fails_at_its_end_naming_it_and_its_part_is_removed() {
    let w = world();
    let server = w.server();
    let mut data = contents()[0].1.clone();
    data[3000] ^= 1; // same size: the server serves it, the hash catches it
    std::fs::write(w.bundle.join("model.onnx"), &data).unwrap();
    let mut f = w.fetcher();
    let err = pump(&server, &mut f).unwrap_err();
    match &err {
        ChunkError::Staging(crate::staging::StagingError::HashMismatch {
            file, expected, ..
        }) => {
            assert_eq!(file, "model.onnx");
            assert_eq!(expected, &w.manifest.files[0].sha256);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("model.onnx"), "{err}");
    assert!(!w.staging.join("model.onnx.part").exists());
    assert!(!w.staging.join("model.onnx").exists());
    assert!(f.is_failed() && f.next_requests().is_empty());
    assert!(matches!(f.on_chunk(b"x"), Err(ChunkError::Stopped)));

    // A size change is refused by the server; the fetcher stops, keeping its parts.
    let w = world();
    let server = w.server();
    let mut f = w.fetcher();
    let reqs = f.next_requests();
    f.on_chunk(&server.answer(&reqs[0]).message).unwrap();
    std::fs::write(w.bundle.join("model.onnx"), b"short").unwrap();
    let err = f.on_chunk(&server.answer(&reqs[1]).message).unwrap_err();
    assert!(
        matches!(&err, ChunkError::Refused { file, offset, reason }
            if file == "model.onnx" && *offset == CHUNK && reason.contains("5 bytes on the gateway")),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(w.staging.join("model.onnx.part"))
            .unwrap()
            .len(),
        CHUNK
    );
}

#[test]
fn a_new_fetcher_resumes_from_the_parts_and_keeps_finished_files() {
    let w = world();
    let server = w.server();
    let mut f = w.fetcher();
    // Half the chunks, then the fetcher is dropped (the device restarts).
    let total_chunks = chunks_of(&w.manifest);
    let mut got = 0;
    while got < total_chunks / 2 + 2 {
        for r in f.next_requests() {
            f.on_chunk(&server.answer(&r).message).unwrap();
            got += 1;
        }
    }
    let before = f.progress();
    drop(f);
    assert!(before.done > 0 && before.done < before.total);
    let mut f = w.fetcher();
    let p = f.progress();
    assert_eq!(p.done, before.done, "the parts and finished files count");
    assert_eq!(p.files_done, before.files_done);
    let first = f.next_requests();
    assert!(
        first.iter().all(|r| r.file != "model.onnx"),
        "the finished model is not fetched again: {first:?}"
    );
    f.on_timeout();
    let asked = pump(&server, &mut f).unwrap();
    assert_eq!(asked, total_chunks - got, "only what was missing");
    w.staged_ok();
}

#[test]
fn odd_leftovers_in_staging_are_dropped_or_resumed_like_the_http_downloader() {
    let w = world();
    let server = w.server();
    std::fs::create_dir_all(w.staging.join("health")).unwrap();
    let model = &contents()[0].1;
    // A part longer than the file, a full-length wrong part, a wrong finished file, a
    // symbolic link where a part goes.
    std::fs::write(w.staging.join("labels.txt.part"), vec![b'x'; 100]).unwrap();
    std::fs::write(w.staging.join("health/input.bin.part"), vec![0u8; 2000]).unwrap();
    std::fs::write(w.staging.join("empty.txt"), b"not empty").unwrap();
    let outside = w.staging.parent().unwrap().join("outside");
    std::fs::write(&outside, b"keep me").unwrap();
    std::os::unix::fs::symlink(&outside, w.staging.join("model.onnx.part")).unwrap();
    let mut f = w.fetcher();
    let p = f.progress();
    assert_eq!((p.done, p.files_done), (0, 1));
    assert!(!w.staging.join("model.onnx.part").exists());
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
    pump(&server, &mut f).unwrap();
    w.staged_ok();

    // A full-length part that matches is put in place without a request.
    let w = world();
    std::fs::create_dir_all(&w.staging).unwrap();
    std::fs::write(w.staging.join("model.onnx.part"), model).unwrap();
    let f = w.fetcher();
    assert!(w.staging.join("model.onnx").exists());
    assert_eq!(f.progress().files_done, 2);
}

#[test]
fn the_server_refuses_links_and_anything_not_exactly_a_listed_file() {
    let w = world();
    let server = w.server();
    let req = |file: &str, offset: u64, length: u64| FetchRequest {
        name: "moderation".into(),
        version: 3,
        file: file.into(),
        offset,
        length,
    };
    std::fs::write(w.bundle.join("secret.txt"), b"not listed").unwrap();
    let size = w.manifest.files[0].size;
    for (r, why) in [
        (
            req("secret.txt", 0, 10),
            "not a file of moderation version 3",
        ),
        (req("model.onnx", size, 10), "not inside"),
        (req("model.onnx", u64::MAX, 10), "not inside"),
        (req("model.onnx", 0, 0), "1 to"),
        (req("model.onnx", 0, MAX_CHUNK_DATA + 1), "1 to"),
        (req("empty.txt", 0, 1), "not inside"),
        (
            FetchRequest {
                version: 2,
                ..req("model.onnx", 0, 10)
            },
            "not moderation version 2",
        ),
        (
            FetchRequest {
                name: "other".into(),
                ..req("model.onnx", 0, 10)
            },
            "not other version 3",
        ),
    ] {
        let a = server.answer(&r);
        let reason = a.served.unwrap_err();
        assert!(reason.contains(why), "{r:?}: {reason}");
        let (h, data) = decode_chunk(&a.message).unwrap();
        assert_eq!((h.error.as_deref(), data), (Some(reason.as_str()), &[][..]));
        assert_eq!((h.file, h.offset, h.version), (r.file, r.offset, r.version));
    }
    // A served chunk: exactly the bytes, even at the end of the file.
    let a = server.answer(&req("model.onnx", size - 17, 1000));
    assert_eq!(a.served, Ok(17));
    let (_, data) = decode_chunk(&a.message).unwrap();
    assert_eq!(data, &contents()[0].1[size as usize - 17..]);

    // Links: the file, a directory on its path, the bundle directory itself.
    let outside = w.bundle.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("input.bin"), bytes(2, 2000)).unwrap();
    std::fs::write(outside.join("labels"), b"person\ncar\n").unwrap();
    std::fs::remove_file(w.bundle.join("labels.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("labels"), w.bundle.join("labels.txt")).unwrap();
    std::fs::remove_dir_all(w.bundle.join("health")).unwrap();
    std::os::unix::fs::symlink(&outside, w.bundle.join("health")).unwrap();
    for f in ["labels.txt", "health/input.bin"] {
        let reason = server.answer(&req(f, 0, 5)).served.unwrap_err();
        assert!(reason.contains("symbolic link"), "{f}: {reason}");
    }
    let link = w.bundle.parent().unwrap().join("bundle-link");
    std::os::unix::fs::symlink(&w.bundle, &link).unwrap();
    let err = ChunkServer::new(&link, &w.manifest).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // A FIFO does not block the server.
    std::fs::remove_file(w.bundle.join("model.onnx")).unwrap();
    let c =
        std::ffi::CString::new(w.bundle.join("model.onnx").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path and a mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reason = server.answer(&req("model.onnx", 0, 5)).served.unwrap_err();
    assert!(reason.contains("not a regular file"), "{reason}");
}

#[test]
fn fetch_requests_are_parsed_strictly() {
    let ok =
        br#"{"name":"moderation","version":3,"file":"health/input.bin","offset":0,"length":5}"#;
    assert_eq!(parse_fetch_request(ok).unwrap().file, "health/input.bin");
    for (bad, why) in [
        (
            &br#"{"name":"moderation","version":3,"file":"../x","offset":0,"length":5}"#[..],
            "..",
        ),
        (
            br#"{"name":"moderation","version":3,"file":"/etc/passwd","offset":0,"length":5}"#,
            "absolute",
        ),
        (
            br#"{"name":"Mod","version":3,"file":"a","offset":0,"length":5}"#,
            "not allowed",
        ),
        (
            br#"{"name":"m","version":3,"file":"a","offset":0,"length":5,"x":1}"#,
            "unknown field",
        ),
        (
            br#"{"name":"m","version":3,"file":"a","file":"b","offset":0,"length":5}"#,
            "duplicate",
        ),
        (
            br#"{"name":"m","version":-1,"file":"a","offset":0,"length":5}"#,
            "invalid",
        ),
    ] {
        let e = parse_fetch_request(bad).unwrap_err();
        assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(bad));
    }
    let big = format!(
        r#"{{"name":"m","version":1,"file":"{}","offset":0,"length":1}}"#,
        "a".repeat(1100)
    );
    assert!(
        parse_fetch_request(big.as_bytes())
            .unwrap_err()
            .contains("at most")
    );
}

#[test]
fn error_answers_to_our_requests_stop_the_transfer_stale_ones_do_not() {
    let w = world();
    let server = w.server();
    let mut f = w.fetcher();
    let reqs = f.next_requests();
    // An error answer for a chunk not outstanding: ignored.
    let stale = server.answer(&FetchRequest {
        offset: 999_999,
        ..reqs[0].clone()
    });
    assert!(stale.served.is_err());
    assert_eq!(f.on_chunk(&stale.message).unwrap().ignored, 1);
    // An error answer for one we asked: the transfer stops.
    let forged = encode_chunk(
        &ChunkHeader {
            error: Some("no such bundle here".into()),
            ..header_of(&reqs[1])
        },
        &[],
    );
    let err = f.on_chunk(&forged).unwrap_err();
    assert!(err.to_string().contains("no such bundle here"), "{err}");
}

#[test]
fn unsafe_manifests_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    let good = file("a.bin", b"abc");
    for (files, why) in [
        (vec![file("../a", b"x")], "climbs out"),
        (vec![file("a.bin.part", b"x")], ".part"),
        (vec![good.clone(), good.clone()], "listed twice"),
        (
            vec![BundleFile {
                sha256: "ABC".into(),
                ..good.clone()
            }],
            "hex",
        ),
        (
            vec![
                BundleFile {
                    size: u64::MAX,
                    ..good.clone()
                },
                file("b", b"x"),
            ],
            "overflows",
        ),
    ] {
        let e = ChunkFetcher::new("m", 1, &files, &staging).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        assert!(!staging.exists(), "{why}: nothing written");
    }
    // An empty file whose digest is not the empty digest can never be staged.
    let e = ChunkFetcher::new(
        "m",
        1,
        &[BundleFile {
            path: "e".into(),
            sha256: "0".repeat(64),
            size: 0,
        }],
        &staging,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ChunkError::Staging(crate::staging::StagingError::HashMismatch { .. })
        ),
        "{e}"
    );
}

#[test]
fn hostile_messages_never_panic_or_write() {
    let w = world();
    let server = w.server();
    let mut f = w.fetcher();
    let reqs = f.next_requests();
    let good = server.answer(&reqs[0]).message;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let mut m = good.clone();
        match i % 3 {
            0 => {
                let at = rnd() as usize % m.len();
                m[at] ^= (rnd() as u8) | 1;
            }
            1 => m.truncate(rnd() as usize % m.len()),
            _ => m = bytes(rnd(), rnd() as usize % 300),
        }
        let _ = parse_fetch_request(&m);
        // A flipped byte may still decode (in the JSON's whitespace-free header a flip
        // changes a value): then it is a foreign chunk or damaged data, never written.
        if let Ok(p) = f.on_chunk(&m) {
            assert_eq!(p.done, 0);
        }
    }
    f.on_chunk(&good).unwrap();
    assert_eq!(f.progress().done, CHUNK);
    assert!(!Path::new(&w.staging.join("secret.txt")).exists());
}
