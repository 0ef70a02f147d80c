//! The `.maml.md` workflow format (DESIGN §5): YAML front matter between `---` lines,
//! Markdown sections under `## ` headings, and a trailing fenced ```` ```signature ```` block.
//!
//! Order matters for safety: [`split_signed`] is a plain text scan (no YAML) that yields the
//! signed bytes — the document exactly as transmitted up to the signature block, CRLF
//! normalised to LF — and the signature block; only after the signature verified does
//! [`parse`] look at YAML. Nothing is ever re-serialised for signing or verification.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 128 * 1024;
/// The format version this build reads and writes.
pub const MAML_VERSION: &str = "2.0";
/// Section names with a meaning; others are kept and ignored.
pub const KNOWN_SECTIONS: &[&str] = &[
    "Intent",
    "Context",
    "Pipeline",
    "Input_Schema",
    "Output_Schema",
    "History",
];

/// A problem with a document, with the 1-based line it was found on where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct MamlError {
    /// 1-based line number.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

fn at(line: usize, message: impl Into<String>) -> MamlError {
    MamlError {
        line: Some(line),
        message: message.into(),
    }
}

fn whole(message: impl Into<String>) -> MamlError {
    MamlError {
        line: None,
        message: message.into(),
    }
}

/// The trailing signature block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignatureBlock {
    /// Signing key id.
    pub key: String,
    /// Algorithm (`ml-dsa-65`).
    pub alg: String,
    /// Base64 signature.
    pub sig: String,
}

impl SignatureBlock {
    /// The block as it is appended to a document.
    pub fn render(&self) -> String {
        format!(
            "```signature\nalg: {}\nkey: {}\nsig: {}\n```\n",
            self.alg, self.key, self.sig
        )
    }
}

/// The opening line of the signature block.
const SIGNATURE_FENCE: &str = "```signature";

/// LF-normalises `doc` (CRLF → LF).
pub fn normalise(doc: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len());
    let mut i = 0;
    while i < doc.len() {
        if doc[i] == b'\r' && doc.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(doc[i]);
        i += 1;
    }
    out
}

/// Parses consecutive signature blocks (`text` starts at the first fence, on 1-based line
/// `first_line`); blank lines may separate and follow them, nothing else.
pub fn parse_signature_blocks(
    text: &str,
    first_line: usize,
) -> Result<Vec<SignatureBlock>, MamlError> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, BTreeMap<String, String>)> = None;
    for (k, line) in text.lines().enumerate() {
        let n = first_line + k;
        match &mut open {
            None if line.trim().is_empty() => {}
            None if line.trim_end() == SIGNATURE_FENCE => open = Some((n, BTreeMap::new())),
            None => return Err(at(n, "text after the signature block")),
            Some((start, fields)) if line.trim_end() == "```" => {
                let start = *start;
                let mut take = |key: &str| {
                    fields
                        .remove(key)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| at(start, format!("the signature block has no {key}")))
                };
                blocks.push(SignatureBlock {
                    alg: take("alg")?,
                    key: take("key")?,
                    sig: take("sig")?,
                });
                open = None;
            }
            Some((_, fields)) => {
                let (key, value) = line.split_once(':').ok_or_else(|| {
                    at(
                        n,
                        format!("signature block line {line:?} is not `key: value`"),
                    )
                })?;
                let key = key.trim();
                if !["alg", "key", "sig"].contains(&key) {
                    return Err(at(n, format!("unknown signature field {key:?}")));
                }
                if fields
                    .insert(key.to_string(), value.trim().to_string())
                    .is_some()
                {
                    return Err(at(n, format!("signature field {key:?} given twice")));
                }
            }
        }
    }
    if let Some((start, _)) = open {
        return Err(at(start, "the signature block is not closed with ```"));
    }
    Ok(blocks)
}

/// Splits LF-normalised `text` at its first signature fence (a line of its own): the signed
/// bytes and every signature block after them.
pub fn split_blocks(text: &[u8]) -> Result<(Vec<u8>, Vec<SignatureBlock>), MamlError> {
    let s = std::str::from_utf8(text).map_err(|e| whole(format!("not UTF-8: {e}")))?;
    let start = s
        .match_indices(SIGNATURE_FENCE)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || s.as_bytes()[i - 1] == b'\n')
        .ok_or_else(|| whole("no ```signature block at the end: the document is not signed"))?;
    let first_line = s[..start].matches('\n').count() + 1;
    let blocks = parse_signature_blocks(&s[start..], first_line)?;
    Ok((text[..start].to_vec(), blocks))
}

/// Splits a transmitted document into its signed bytes (LF-normalised) and its one signature
/// block. A text scan only: no YAML is parsed here.
pub fn split_signed(doc: &[u8]) -> Result<(Vec<u8>, SignatureBlock), MamlError> {
    if doc.len() > MAX_DOCUMENT_BYTES {
        return Err(whole(format!(
            "document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
            doc.len()
        )));
    }
    let text = normalise(doc);
    let (signed, mut blocks) = split_blocks(&text)?;
    match blocks.len() {
        1 => Ok((signed, blocks.remove(0))),
        n => Err(whole(format!(
            "a workflow carries exactly one signature block, not {n}"
        ))),
    }
}

/// Who may apply a workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Device ids.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Target {
    /// The target as one string, the same for the same devices and groups in any order:
    /// `d:<devices, sorted, comma-joined>|g:<groups, likewise>`. Devices keep their
    /// anti-replay sequences per issuer key and this string; a gateway allocates sequences
    /// under the same key.
    pub fn canonical(&self) -> String {
        let mut d = self.devices.clone();
        d.sort();
        let mut g = self.groups.clone();
        g.sort();
        format!("d:{}|g:{}", d.join(","), g.join(","))
    }
}

/// A model a workflow needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredModel {
    /// Registry name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// SHA-256 of the model file.
    pub sha256: String,
}

/// What a workflow needs to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Models (by name, version, digest).
    #[serde(default)]
    pub models: Vec<RequiredModel>,
    /// Backends it can run on (`cuda`, `jetson`, `cpu`).
    #[serde(default)]
    pub backend: Vec<String>,
}

/// What a workflow asks to read, write and execute (checked against device policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Things read (sources).
    #[serde(default)]
    pub read: Vec<String>,
    /// Things written (sink paths, topics).
    #[serde(default)]
    pub write: Vec<String>,
    /// Things executed (models).
    #[serde(default)]
    pub execute: Vec<String>,
}

/// How the document is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Signature algorithm (`ml-dsa-65`).
    pub signature: String,
    /// `none` or `aes-256-gcm+ml-kem-768`.
    pub encryption: String,
}

/// The front matter; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontMatter {
    /// Must be [`MAML_VERSION`].
    pub maml_version: String,
    /// `urn:uuid:…`, unique per workflow.
    pub id: String,
    /// `workflow`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Issuer, e.g. `chimera://fleet-gw-1`.
    pub origin: String,
    /// Who may apply it.
    pub target: Target,
    /// Strictly increasing per (issuer key, target): anti-replay.
    pub sequence: u64,
    /// RFC 3339 UTC.
    pub issued_at: String,
    /// RFC 3339 UTC.
    pub expires_at: String,
    /// Requirements.
    #[serde(default)]
    pub requires: Requires,
    /// Permissions.
    #[serde(default)]
    pub permissions: Permissions,
    /// Protection.
    pub security: Security,
}

/// A Markdown section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Heading text after `## `.
    pub name: String,
    /// 1-based line of the heading.
    pub line: usize,
    /// The section's text (without its heading).
    pub body: String,
}

/// A parsed (and, by the caller, already verified) document.
#[derive(Debug, Clone)]
pub struct Document {
    /// The front matter.
    pub front: FrontMatter,
    /// The exact front-matter bytes (associated data of sealing).
    pub front_text: String,
    /// Sections in order.
    pub sections: Vec<Section>,
    /// The Pipeline section's YAML block and its first line, if any.
    pub pipeline_yaml: Option<(String, usize)>,
}

/// Earliest time [`parse_time`] accepts and [`format_time`] writes: `1970-01-01T00:00:00Z`.
pub const MIN_TIME_S: i64 = 0;
/// Latest time [`parse_time`] accepts and [`format_time`] writes: `9999-12-31T23:59:59Z`.
pub const MAX_TIME_S: i64 = 253_402_300_799;

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` → seconds since the Unix epoch.
///
/// Strict, since these times come from documents and trust metadata: exactly four year
/// digits, two digits for every other field, an upper-case `T` and `Z` (UTC only, no
/// offsets), ASCII digits only (no signs, spaces or other numerals), and a fraction, if
/// any, of 1–9 digits after a `.`, which is truncated (the result is whole seconds). The
/// date must exist (leap years included) and lie in 1970–9999; hours are 0–23, minutes
/// and seconds 0–59. Leap seconds (`:60`) are refused: Unix time has no number for them,
/// and accepting one would give two spellings of the next second. `None` for anything
/// else; never panics.
pub fn parse_time(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || [b[4], b[7], b[10], b[13], b[16]] != *b"--T::" {
        return None;
    }
    let rest = &b[19..];
    let rest = match rest.split_first() {
        Some((b'.', frac)) => {
            let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=9).contains(&digits) {
                return None;
            }
            &frac[digits..]
        }
        _ => rest,
    };
    if rest != b"Z" {
        return None;
    }
    let number = |at: usize, len: usize| -> Option<i64> {
        b.get(at..at + len)?.iter().try_fold(0_i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hh, mm, ss) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if !(1970..=9999).contains(&y) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = aegis_config::civil::days_from_civil(y, mo, d)?;
    days.checked_mul(86_400)?
        .checked_add(hh * 3600 + mm * 60 + ss)
}

/// Seconds since the Unix epoch → `YYYY-MM-DDTHH:MM:SSZ` (the inverse of [`parse_time`]).
///
/// Never panics. Times outside what [`parse_time`] accepts are clamped to
/// [`MIN_TIME_S`]..=[`MAX_TIME_S`] (`1970-01-01T00:00:00Z`..=`9999-12-31T23:59:59Z`), so the
/// result always parses back: a pre-1970 clock reads as the epoch, and "never expires"
/// arithmetic that overshoots reads as the end of year 9999.
pub fn format_time(secs: i64) -> String {
    let secs = secs.clamp(MIN_TIME_S, MAX_TIME_S);
    let ((y, m, d), (hh, mm, ss)) = aegis_config::civil::civil_utc(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// The system clock in seconds since the Unix epoch (0 for a clock set before 1970,
/// `i64::MAX` for one beyond the year 292 billion).
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

thread_local! {
    static YAML_ENTRIES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has handed workflow text (front matter, a Pipeline block) to
/// the YAML parser. For tests that a document whose signature does not verify is refused
/// before any YAML is read (DESIGN §5); per thread, so tests running in parallel do not
/// disturb each other. Not an interface.
#[doc(hidden)]
pub fn yaml_parser_entries() -> u64 {
    YAML_ENTRIES.with(std::cell::Cell::get)
}

/// Counts one entry into the YAML parser (see [`yaml_parser_entries`]): call just before.
pub(crate) fn note_yaml_entry() {
    YAML_ENTRIES.with(|c| c.set(c.get() + 1));
}

/// Parses signed bytes (from [`split_signed`], after verification) into a document.
pub fn parse(signed: &[u8]) -> Result<Document, MamlError> {
    if signed.len() > MAX_DOCUMENT_BYTES {
        return Err(whole(format!(
            "document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
            signed.len()
        )));
    }
    let s = std::str::from_utf8(signed).map_err(|e| whole(format!("not UTF-8: {e}")))?;
    let mut lines = s.split_inclusive('\n').enumerate();
    match lines.next() {
        Some((_, l)) if l.trim_end() == "---" => {}
        _ => {
            return Err(at(
                1,
                "a MAML document starts with a `---` front-matter line",
            ));
        }
    }
    let mut front_text = String::new();
    let mut body_start = None;
    for (i, l) in lines.by_ref() {
        if l.trim_end() == "---" {
            body_start = Some(i + 1);
            break;
        }
        front_text.push_str(l);
    }
    let body_start =
        body_start.ok_or_else(|| at(1, "the front matter is not closed with `---`"))?;
    note_yaml_entry();
    let value = aegis_config::yaml_value(&front_text, "front matter").map_err(|e| {
        // YAML errors carry a line inside the front matter; shift to document lines.
        let msg = e.to_string();
        match line_in(&msg) {
            Some(l) => at(l + 1, msg),
            None => whole(msg),
        }
    })?;
    let front: FrontMatter = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key_line = path
            .split('.')
            .next_back()
            .and_then(|k| {
                find_key_line(
                    &front_text,
                    k.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit())
                        .trim_end_matches('['),
                )
            })
            .map_or(1, |l| l + 1);
        at(key_line, format!("front matter {path}: {}", e.inner()))
    })?;
    check_front(&front, &front_text)?;
    let mut sections: Vec<Section> = Vec::new();
    for (i, l) in lines {
        if let Some(name) = l.strip_prefix("## ") {
            sections.push(Section {
                name: name.trim().to_string(),
                line: i + 1,
                body: String::new(),
            });
        } else if let Some(sec) = sections.last_mut() {
            sec.body.push_str(l);
        } else if !l.trim().is_empty() && !l.starts_with("# ") {
            return Err(at(i + 1, "text before the first `## ` section"));
        }
    }
    let _ = body_start;
    let mut seen = std::collections::HashSet::new();
    for sec in &sections {
        if KNOWN_SECTIONS.contains(&sec.name.as_str()) && !seen.insert(sec.name.clone()) {
            return Err(at(
                sec.line,
                format!("section {:?} appears twice", sec.name),
            ));
        }
    }
    let pipeline_yaml = match sections.iter().find(|s| s.name == "Pipeline") {
        None => None,
        Some(sec) => Some(fenced_yaml(sec)?),
    };
    Ok(Document {
        front,
        front_text,
        sections,
        pipeline_yaml,
    })
}

/// The first ```` ```yaml ```` block of a section and the document line its YAML starts on.
fn fenced_yaml(sec: &Section) -> Result<(String, usize), MamlError> {
    let mut out = String::new();
    let mut start = None;
    for (k, l) in sec.body.split_inclusive('\n').enumerate() {
        let n = sec.line + 1 + k;
        match start {
            None if l.trim_end() == "```yaml" => start = Some(n + 1),
            None => {}
            Some(_) if l.trim_end() == "```" => return Ok((out, start.unwrap_or(n))),
            Some(_) => out.push_str(l),
        }
    }
    Err(at(
        sec.line,
        match start {
            None => "the Pipeline section has no ```yaml block",
            Some(_) => "the Pipeline section's ```yaml block is not closed",
        },
    ))
}

fn line_in(msg: &str) -> Option<usize> {
    let i = msg.find("line ")?;
    msg[i + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn find_key_line(front: &str, key: &str) -> Option<usize> {
    front
        .lines()
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

fn check_front(f: &FrontMatter, text: &str) -> Result<(), MamlError> {
    let line = |k: &str| find_key_line(text, k).map_or(1, |l| l + 1);
    if f.maml_version != MAML_VERSION {
        return Err(at(
            line("maml_version"),
            format!(
                "maml_version {:?} is not supported (this agent reads {MAML_VERSION:?})",
                f.maml_version
            ),
        ));
    }
    if f.kind != "workflow" {
        return Err(at(
            line("type"),
            format!("type {:?}: only `workflow` documents exist", f.kind),
        ));
    }
    let uuid = f.id.strip_prefix("urn:uuid:").unwrap_or("");
    if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(at(
            line("id"),
            format!("id {:?} is not urn:uuid:<uuid>", f.id),
        ));
    }
    if !f.origin.starts_with("chimera://") {
        return Err(at(
            line("origin"),
            format!("origin {:?} is not chimera://<issuer>", f.origin),
        ));
    }
    if f.target.devices.is_empty() && f.target.groups.is_empty() {
        return Err(at(line("target"), "target names no device and no group"));
    }
    let (issued, expires) = (parse_time(&f.issued_at), parse_time(&f.expires_at));
    let issued = issued.ok_or_else(|| {
        at(
            line("issued_at"),
            format!("issued_at {:?} is not RFC 3339 UTC", f.issued_at),
        )
    })?;
    let expires = expires.ok_or_else(|| {
        at(
            line("expires_at"),
            format!("expires_at {:?} is not RFC 3339 UTC", f.expires_at),
        )
    })?;
    if expires <= issued {
        return Err(at(line("expires_at"), "expires_at is not after issued_at"));
    }
    if f.security.signature != crate::sign::ALG {
        return Err(at(
            line("signature"),
            format!(
                "security.signature {:?}: only {} is supported",
                f.security.signature,
                crate::sign::ALG
            ),
        ));
    }
    if !["none", crate::seal::ALG].contains(&f.security.encryption.as_str()) {
        return Err(at(
            line("encryption"),
            format!(
                "security.encryption {:?}: none or {}",
                f.security.encryption,
                crate::seal::ALG
            ),
        ));
    }
    Ok(())
}

/// Sets what a gateway decides when it issues an unsigned draft — `sequence`, `issued_at`,
/// `expires_at` — by replacing those lines of the front matter; every other byte stays as
/// written (nothing is re-serialised). `draft` is LF-normalised and `parsed` is its
/// [`parse`]. Each of the three must be a top-level key on a line of its own, as `chimera new`
/// writes them; the result is parsed again and refused unless exactly those three values
/// changed (a flow-style front matter, or a value continued on the next line, is refused
/// with the line). Returns the new text and its parse.
pub fn stamp(
    draft: &str,
    parsed: &Document,
    sequence: u64,
    issued_at: &str,
    expires_at: &str,
) -> Result<(String, Document), MamlError> {
    let fields = [
        ("sequence", sequence.to_string()),
        ("issued_at", issued_at.to_string()),
        ("expires_at", expires_at.to_string()),
    ];
    let mut found = [0usize; 3];
    let mut out = String::with_capacity(draft.len() + 64);
    let mut in_front = false;
    let mut closed = false;
    for (i, line) in draft.split_inclusive('\n').enumerate() {
        if closed {
            out.push_str(line);
            continue;
        }
        if line.trim_end() == "---" {
            closed = in_front;
            in_front = true;
            out.push_str(line);
            continue;
        }
        let field = fields
            .iter()
            .position(|(k, _)| line.strip_prefix(k).is_some_and(|r| r.starts_with(':')));
        match field {
            Some(f) if in_front => {
                if found[f] > 0 {
                    return Err(at(i + 1, format!("{} appears twice", fields[f].0)));
                }
                found[f] = i + 1;
                out.push_str(&format!("{}: {}\n", fields[f].0, fields[f].1));
            }
            _ => out.push_str(line),
        }
    }
    if let Some(f) = found.iter().position(|&l| l == 0) {
        return Err(whole(format!(
            "the front matter has no `{}:` line of its own to set (write each of sequence, \
             issued_at and expires_at as a top-level key on its own line)",
            fields[f].0
        )));
    }
    let stamped = parse(out.as_bytes())?;
    let mut expected = parsed.front.clone();
    expected.sequence = sequence;
    expected.issued_at = issued_at.to_string();
    expected.expires_at = expires_at.to_string();
    if stamped.front != expected || stamped.sections != parsed.sections {
        return Err(at(
            found[0].min(found[1]).min(found[2]),
            "setting sequence, issued_at and expires_at changed more than those values: write \
             each as a plain top-level `key: value` line",
        ));
    }
    Ok((out, stamped))
}

/// A valid, unsigned workflow to start from (`chimera new`).
pub fn template(
    id: &str,
    issuer: &str,
    device: &str,
    sequence: u64,
    issued_at: &str,
    expires_at: &str,
) -> String {
    workflow_text(
        &Draft {
            id,
            issuer,
            devices: &[device],
            groups: &[],
            sequence,
            issued_at,
            expires_at,
        },
        TEMPLATE_PIPELINE,
    )
}

/// The Pipeline block of [`template`].
pub const TEMPLATE_PIPELINE: &str = "sources:\n  - { id: cam0, url: \"rtsp://192.0.2.10/stream1\" }\nstages:\n  - { kind: timestamp_overlay }\nsinks:\n  - { kind: record, dir: /var/lib/aegis/recordings }";

/// The front-matter values of a new workflow.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    /// UUID (without `urn:uuid:`).
    pub id: &'a str,
    /// Issuer name (`origin: chimera://ISSUER`).
    pub issuer: &'a str,
    /// Target devices.
    pub devices: &'a [&'a str],
    /// Target groups.
    pub groups: &'a [&'a str],
    /// Sequence.
    pub sequence: u64,
    /// RFC 3339 UTC.
    pub issued_at: &'a str,
    /// RFC 3339 UTC.
    pub expires_at: &'a str,
}

/// An unsigned, unsealed workflow with `pipeline` (YAML, the Pipeline block's content).
pub fn workflow_text(d: &Draft<'_>, pipeline: &str) -> String {
    format!(
        r#"---
maml_version: "{MAML_VERSION}"
id: urn:uuid:{id}
type: workflow
origin: chimera://{issuer}
target: {{ devices: [{devices}], groups: [{groups}] }}
sequence: {sequence}
issued_at: {issued_at}
expires_at: {expires_at}
requires: {{ models: [], backend: [cpu, cuda, jetson] }}
permissions: {{ read: [], write: [], execute: [] }}
security: {{ signature: {sig}, encryption: none }}
---
## Intent
What this workflow is for, in plain words.

## Pipeline
```yaml
{pipeline}
```

## History
[{issued_at}] [CREATE] chimera new
"#,
        id = d.id,
        issuer = d.issuer,
        devices = d.devices.join(", "),
        groups = d.groups.join(", "),
        sequence = d.sequence,
        issued_at = d.issued_at,
        expires_at = d.expires_at,
        sig = crate::sign::ALG
    )
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn valid_times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-11-26T15:22:33Z"), Some(1_795_706_553));
        assert_eq!(parse_time("2026-11-26T15:22:33.5Z"), Some(1_795_706_553));
        assert_eq!(
            parse_time("2026-11-26T15:22:33.123456789Z"),
            Some(1_795_706_553)
        );
        assert_eq!(parse_time("9999-12-31T23:59:59Z"), Some(MAX_TIME_S));
        assert_eq!(
            parse_time("9999-12-31T23:59:59.999999999Z"),
            Some(MAX_TIME_S)
        );
        // Leap years: 2000 and 2024 have February 29, 1900 (before the range anyway)
        // and 2100 do not.
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_time("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(parse_time("2100-02-28T00:00:00Z"), Some(4_107_456_000));
        assert_eq!(parse_time("2000-12-31T23:59:59Z"), Some(978_307_199));
    }

    #[test]
    fn malformed_or_out_of_range_times_are_refused() {
        for bad in [
            "",
            "Z",
            "1969-12-31T23:59:59Z",
            "10000-01-01T00:00:00Z",
            "99999999999-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
            "+2026-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-13-10T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-32T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:60:00Z",
            "2026-01-01T23:59:60Z",
            "2026-01-01T-1:00:00Z",
            "2026-01-01T00:-1:00Z",
            "2026-01-01T00:00:+1Z",
            "2026-1-01T00:00:00Z",
            "2026-01-1T00:00:00Z",
            "2026-01-01T0:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01t00:00:00Z",
            "2026-01-01T00:00:00z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567890Z",
            "2026-01-01T00:00:00.1aZ",
            "2026-01-01T00:00:00ZZ",
            "2026-01-01T00:00:00Z ",
            " 2026-01-01T00:00:00Z",
            "2026-01-01T00:00:0 Z",
            "2026-01-01T00:00:00,5Z",
            "２０２６-01-01T00:00:00Z",
            "2026-01-01T00:00:0٥Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_time_clamps_and_round_trips() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(-1), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(i64::MIN), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(MAX_TIME_S), "9999-12-31T23:59:59Z");
        assert_eq!(format_time(MAX_TIME_S + 1), "9999-12-31T23:59:59Z");
        assert_eq!(format_time(i64::MAX), "9999-12-31T23:59:59Z");
        // Every boundary of a day, month and year, and a stride through the whole range.
        let mut t = MIN_TIME_S;
        while t <= MAX_TIME_S {
            for probe in [t, t + 86_399, t.saturating_sub(1).max(0)] {
                assert_eq!(parse_time(&format_time(probe)), Some(probe), "{probe}");
            }
            t += 86_400 * 29 + 3_601;
        }
        for probe in [MAX_TIME_S - 1, MAX_TIME_S, 4_107_456_000 - 1, 4_107_456_000] {
            assert_eq!(parse_time(&format_time(probe)), Some(probe), "{probe}");
        }
    }

    #[test]
    fn now_is_in_range() {
        let now = now_s();
        assert!((1_700_000_000..MAX_TIME_S).contains(&now), "{now}");
        assert_eq!(parse_time(&format_time(now)), Some(now));
    }
}
