//! Semantic validation.
//!
//! serde checks that values have the right shape; this module checks that
//! they make sense (ranges, URL schemes, identifiers that end up in MQTT
//! topics, cross-field rules) so the agent never starts with a configuration
//! that would fail later at run time. Every check appends to a problem list
//! instead of returning early, so all mistakes are reported together.

use std::collections::HashSet;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use crate::error::Problem;
use crate::model::{
    BITRATE_KBPS_RANGE, BackendConfig, BackendKind, Comparison, Condition, DeviceConfig,
    EncoderConfig, EvidenceConfig, EvidenceTrigger, FleetConfig, GOP_FRAMES_RANGE, HlsServerConfig,
    HlsSink, InferenceConfig, KEEPALIVE_S_RANGE, LogConfig, MAX_CLIP_RANGE, MAX_ENCODER_THREADS,
    MAX_ID_LEN, MIN_DISK_BUDGET_MB, ModelKindConfig, OutputsConfig, POOL_FRAMES_RANGE,
    POST_ROLL_RANGE, PRE_ROLL_RANGE, PRESETS, PipelineConfig, PushSink, QUEUE_DEPTH_RANGE,
    RETENTION_DAYS_RANGE, RuleConfig, SEGMENT_SECONDS_RANGE, SensorsConfig, SinkConfig,
    SourceConfig, SourceLocation, StoreConfig, WatchdogConfig, WebConfig, WorkflowsConfig,
};
use crate::recover::{join_index, join_key};
use crate::stages::StageModel;
use crate::url::{NetScheme, NetUrl, UrlError};

/// Source URL schemes this crate understands (whether or not this build can
/// open them).
const SOURCE_SCHEMES: &[&str] = &[
    "file", "rtsp", "rtsps", "srt", "rtmp", "rtmps", "v4l2", "whip",
];
/// Accepted schemes for `sensors.gps.url`.
const GPS_SCHEMES: &[&str] = &["serial", "udp", "file"];
/// Accepted schemes for `sensors.imu.url`.
const IMU_SCHEMES: &[&str] = &["file", "iio", "mqtt"];
/// Accepted schemes for `fleet.broker_url`.
const BROKER_SCHEMES: &[&str] = &["mqtt", "mqtts"];

/// libavformat keeps RTSP credentials in a 128-byte buffer; percent-encoding can triple them.
const MAX_CREDENTIALS_LEN: usize = 40;

/// Splits `scheme:rest`. A colon inside a path (`clips/a:b.mp4`) or a single
/// letter before it does not count as a scheme.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = scheme.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// Parses a source URL; the error is a message for the operator.
pub(crate) fn parse_source_url(url: &str) -> Result<SourceLocation, UrlError> {
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    let Some((scheme, rest)) = split_scheme(url) else {
        return Ok(SourceLocation::File(PathBuf::from(url)));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => match rest.strip_prefix("//") {
            Some("") => Err("file URL has no path".into()),
            Some(path) if path.starts_with('/') => Ok(SourceLocation::File(PathBuf::from(path))),
            Some(_) => Err(
                "file URLs must not name a host: use file:///absolute/path or file:relative/path"
                    .into(),
            ),
            None if rest.is_empty() => Err("file URL has no path".into()),
            None => Ok(SourceLocation::File(PathBuf::from(rest))),
        },
        "rtsp" | "rtsps" | "srt" | "rtmp" | "rtmps" => {
            let parsed = NetUrl::parse(url)?;
            Ok(match parsed.scheme {
                NetScheme::Srt => SourceLocation::Srt(parsed),
                NetScheme::Rtmp | NetScheme::Rtmps => SourceLocation::Rtmp(parsed),
                NetScheme::Rtsp | NetScheme::Rtsps => SourceLocation::Rtsp(parsed),
            })
        }
        "v4l2" => match rest.strip_prefix("//") {
            Some(device) if device.starts_with('/') => {
                check_device_path(device)?;
                Ok(SourceLocation::V4l2(PathBuf::from(device)))
            }
            _ => Err("expected v4l2:///dev/videoN (an absolute device path)".into()),
        },
        "whip" if rest.is_empty() => Ok(SourceLocation::Whip),
        "whip" => Err(
            "a WHIP source is just `whip:` (publishers POST to /whip/<source id> on this \
             device's web server)"
                .into(),
        ),
        _ => Err(format!(
            "unsupported scheme \"{scheme}\" (supported: {}, or a plain file path)",
            SOURCE_SCHEMES.join(", ")
        )
        .into()),
    }
}

/// A camera device node: an absolute path whose components are neither empty (`//`, a
/// trailing `/`), `.` nor `..`, without control characters or white space. Policies compare
/// device paths exactly, so there is one spelling per device.
pub(crate) fn check_device_path(path: &str) -> Result<(), UrlError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not an absolute path").into());
    };
    if let Some(i) = path
        .bytes()
        .position(|b| b.is_ascii_control() || b.is_ascii_whitespace())
    {
        return Err(
            format!("the device path has a control or white-space character at byte {i}").into(),
        );
    }
    for segment in rest.split('/') {
        match segment {
            "" => {
                return Err(
                    format!("{path:?} has an empty component (`//` or a trailing `/`)").into(),
                );
            }
            "." | ".." => {
                return Err(format!(
                    "{path:?} has a `{segment}` component: write the device path directly (/dev/video0)"
                ).into());
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn check_range<T: PartialOrd + Display>(
    out: &mut Vec<Problem>,
    path: String,
    value: T,
    range: &RangeInclusive<T>,
) {
    if !range.contains(&value) {
        out.push(Problem::new(
            path,
            format!(
                "must be between {} and {} (got {value})",
                range.start(),
                range.end()
            ),
        ));
    }
}

pub(crate) fn check_not_empty(out: &mut Vec<Problem>, path: String, value: &str) {
    if value.trim().is_empty() {
        out.push(Problem::new(path, "must not be empty"));
    }
}

/// Ids appear in MQTT topics and file names: 1..=64 of `[a-z0-9_-]`.
fn check_id(out: &mut Vec<Problem>, path: String, id: &str) {
    if id.is_empty() {
        out.push(Problem::new(path, "must not be empty"));
    } else if id.chars().count() > MAX_ID_LEN {
        out.push(Problem::new(
            path,
            format!(
                "must be at most {MAX_ID_LEN} characters (got {})",
                id.chars().count()
            ),
        ));
    } else if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
    {
        out.push(Problem::new(
            path,
            format!(
                "invalid character {bad:?} in \"{id}\": use lowercase letters, digits, \
                 '-' and '_' only (ids appear in MQTT topics)"
            ),
        ));
    }
}

/// Checks `url` has one of `allowed` schemes followed by something.
fn check_scheme(out: &mut Vec<Problem>, path: String, url: &str, allowed: &[&str]) {
    let expected = allowed
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect::<Vec<_>>()
        .join(", ");
    if url.trim().is_empty() {
        out.push(Problem::new(path, "must not be empty"));
        return;
    }
    let Some((scheme, rest)) = split_scheme(url) else {
        out.push(Problem::new(
            path,
            format!("missing scheme: expected one of {expected}"),
        ));
        return;
    };
    if !allowed.contains(&scheme.to_ascii_lowercase().as_str()) {
        out.push(Problem::new(
            path,
            format!("unsupported scheme \"{scheme}\" (supported: {expected})"),
        ));
    } else if rest.trim_start_matches('/').is_empty() {
        out.push(Problem::new(
            path,
            format!("nothing after \"{scheme}:\": expected an address or path"),
        ));
    }
}

pub(crate) fn check_device(device: &DeviceConfig, prefix: &str, out: &mut Vec<Problem>) {
    check_id(out, join_key(prefix, "id"), &device.id);
    let groups = join_key(prefix, "groups");
    for (index, group) in device.groups.iter().enumerate() {
        check_id(out, join_index(&groups, index), group);
    }
}

pub(crate) fn check_backend(backend: &BackendConfig, prefix: &str, out: &mut Vec<Problem>) {
    // `cpu` needs no vendor library, so the default `fallback: cpu` is
    // harmless (never used) when `kind` is `cpu`.
    if backend.kind != BackendKind::Cpu && backend.fallback == Some(backend.kind) {
        out.push(Problem::new(
            join_key(prefix, "fallback"),
            format!(
                "fallback must differ from kind (both are \"{}\"); use null to disable the fallback",
                backend.kind
            ),
        ));
    }
}

/// The shortest bearer token accepted (a whip source's `publish_token`, an HLS client's
/// `token`): those endpoints have no lockout, so the token itself must not be guessable
/// (24 random characters are well over 128 bits).
pub const MIN_PUBLISH_TOKEN: usize = 24;

/// A bearer token's rules: [`MIN_PUBLISH_TOKEN`] to 256 visible ASCII characters (it
/// travels in an HTTP header).
fn check_token(token: &str, key: String, out: &mut Vec<Problem>) {
    if !(MIN_PUBLISH_TOKEN..=256).contains(&token.len()) {
        out.push(Problem::new(
            key,
            format!("must be {MIN_PUBLISH_TOKEN} to 256 characters long"),
        ));
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        out.push(Problem::new(
            key,
            "must be visible ASCII characters only (no spaces)",
        ));
    }
}

/// A `whip` source needs its `publish_token`; no other source takes one.
fn check_publish_token(source: &SourceConfig, prefix: &str, out: &mut Vec<Problem>) {
    let key = join_key(prefix, "publish_token");
    let whip = matches!(parse_source_url(&source.url), Ok(SourceLocation::Whip));
    match (&source.publish_token, whip) {
        (None, true) => out.push(Problem::new(
            key,
            "a whip source needs a publish_token (the bearer token its publisher presents)",
        )),
        (Some(_), false) => out.push(Problem::new(key, "only whip sources take a publish_token")),
        (Some(t), true) => check_token(t.expose(), key, out),
        (None, false) => {}
    }
}

pub(crate) fn check_source(source: &SourceConfig, prefix: &str, out: &mut Vec<Problem>) {
    check_id(out, join_key(prefix, "id"), &source.id);
    let url_path = join_key(prefix, "url");
    match parse_source_url(&source.url) {
        Ok(location) => {
            let v4l2 = matches!(location, SourceLocation::V4l2(_));
            if let Some(c) = &source.capture {
                if !v4l2 {
                    out.push(Problem::new(
                        join_key(prefix, "capture"),
                        "only v4l2 sources take capture settings",
                    ));
                }
                if c.width.is_some() != c.height.is_some() {
                    out.push(Problem::new(
                        join_key(prefix, "capture"),
                        "give both width and height, or neither",
                    ));
                }
                for (field, v) in [("width", c.width), ("height", c.height)] {
                    if v.is_some_and(|v| v == 0 || v > 8192) {
                        out.push(Problem::new(
                            join_key(&join_key(prefix, "capture"), field),
                            "must be 1 to 8192",
                        ));
                    }
                }
                if c.fps
                    .is_some_and(|f| !f.is_finite() || f <= 0.0 || f > 1000.0)
                {
                    out.push(Problem::new(
                        join_key(&join_key(prefix, "capture"), "fps"),
                        "must be above 0 and at most 1000",
                    ));
                }
            }
            let rtsp = matches!(location, SourceLocation::Rtsp(_));
            if !rtsp {
                for (field, set) in [
                    ("username", source.username.is_some()),
                    ("password", source.password.is_some()),
                ] {
                    if set {
                        out.push(Problem::new(
                            join_key(prefix, field),
                            "only rtsp sources take credentials (srt and rtmp carry theirs in the URL)",
                        ));
                    }
                }
            }
        }
        Err(reason) => out.push(Problem::new(url_path, reason.to_string())),
    }
    check_publish_token(source, prefix, out);
    if source.password.is_some() && source.username.is_none() {
        out.push(Problem::new(
            join_key(prefix, "password"),
            "a password needs a username",
        ));
    }
    let secret_len = source.username.as_ref().map_or(0, String::len)
        + source.password.as_ref().map_or(0, |p| p.expose().len());
    if secret_len > MAX_CREDENTIALS_LEN {
        out.push(Problem::new(
            join_key(prefix, "password"),
            format!(
                "username and password together may have at most {MAX_CREDENTIALS_LEN} \
                 characters (longer ones are cut short inside libavformat)"
            ),
        ));
    }
    if let Some(u) = &source.username
        && (u.is_empty() || u.contains(':'))
    {
        out.push(Problem::new(
            join_key(prefix, "username"),
            "must be non-empty and contain no ':'",
        ));
    }
    if source.max_frames == Some(0) {
        out.push(Problem::new(
            join_key(prefix, "max_frames"),
            "must be at least 1 (omit it for no limit)",
        ));
    }
    let zones = join_key(prefix, "zones");
    for (i, z) in source.zones.iter().enumerate() {
        let path = join_index(&zones, i);
        check_id(out, join_key(&path, "name"), &z.name);
        if source.zones[..i].iter().any(|o| o.name == z.name) {
            out.push(Problem::new(
                join_key(&path, "name"),
                format!("duplicate zone name {:?}", z.name),
            ));
        }
        check_polygon(&z.polygon, &join_key(&path, "polygon"), out);
    }
}

/// A zone: at least 3 corners, each an image fraction 0 to 1.
fn check_polygon(points: &[[f64; 2]], path: &str, out: &mut Vec<Problem>) {
    if points.len() < 3 {
        out.push(Problem::new(path, "a zone needs at least 3 points"));
    }
    if points.iter().flatten().any(|v| !(0.0..=1.0).contains(v)) {
        out.push(Problem::new(path, "zone points are image fractions 0 to 1"));
    }
}

/// `pipeline.evidence` on its own (ranges; what each `keep` entry may name).
pub(crate) fn check_evidence(e: &EvidenceConfig, prefix: &str, out: &mut Vec<Problem>) {
    check_range(
        out,
        join_key(prefix, "pre_roll_seconds"),
        e.pre_roll_seconds,
        &PRE_ROLL_RANGE,
    );
    check_range(
        out,
        join_key(prefix, "post_roll_seconds"),
        e.post_roll_seconds,
        &POST_ROLL_RANGE,
    );
    check_range(
        out,
        join_key(prefix, "max_clip_seconds"),
        e.max_clip_seconds,
        &MAX_CLIP_RANGE,
    );
    if e.disk_budget_mb < 1 {
        out.push(Problem::new(
            join_key(prefix, "disk_budget_mb"),
            "must be at least 1",
        ));
    }
    let keep = join_key(prefix, "keep");
    for (i, k) in e.keep.iter().enumerate() {
        let path = join_index(&keep, i);
        check_range(
            out,
            join_key(&path, "retention_days"),
            k.retention_days,
            &RETENTION_DAYS_RANGE,
        );
        let detection = k.on == EvidenceTrigger::Detection;
        for (field, set, allowed) in [
            ("labels", !k.labels.is_empty(), detection),
            ("zone", k.zone.is_some(), detection),
            ("rule", k.rule.is_some(), k.on == EvidenceTrigger::Rule),
        ] {
            if set && !allowed {
                out.push(Problem::new(
                    join_key(&path, field),
                    format!("does not apply to `on: {}`", k.on.as_str()),
                ));
            }
        }
    }
}

/// `pipeline.evidence` against the rest of the pipeline: it needs a record sink (its
/// encoder), its directory apart from the recordings, and the zones it names must exist.
pub(crate) fn check_evidence_in_pipeline(
    e: &EvidenceConfig,
    sources: &[Option<SourceConfig>],
    sinks: &[Option<SinkConfig>],
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    let records: Vec<&std::path::Path> = sinks
        .iter()
        .filter_map(|s| match s {
            Some(SinkConfig::Record(r)) => Some(r.dir.as_path()),
            _ => None,
        })
        .collect();
    if records.is_empty() {
        out.push(Problem::new(
            prefix,
            "needs a record sink: clips are cut from its encoded stream",
        ));
    }
    if let Some(r) = records
        .iter()
        .find(|r| e.dir.starts_with(r) || r.starts_with(&e.dir))
    {
        out.push(Problem::new(
            join_key(prefix, "dir"),
            format!(
                "overlaps the record sink's directory {}: the recordings' disk budget would \
                 delete clips",
                r.display()
            ),
        ));
    }
    for (i, k) in e.keep.iter().enumerate() {
        let Some(zone) = &k.zone else { continue };
        let known = sources
            .iter()
            .flatten()
            .any(|s| s.zones.iter().any(|z| &z.name == zone));
        if !known {
            out.push(Problem::new(
                join_key(&join_index(&join_key(prefix, "keep"), i), "zone"),
                format!("no source has a zone named {zone:?}"),
            ));
        }
    }
}

/// Pipeline-wide rules. `sources` holds `None` for sources that failed to
/// parse (already reported); `pool_frames`/`queue_depth` are `None` likewise.
pub(crate) fn check_pipeline_rules(
    sources: Option<&[Option<SourceConfig>]>,
    pool_frames: Option<u32>,
    queue_depth: Option<u32>,
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    let sources_path = join_key(prefix, "sources");
    if let Some(sources) = sources {
        if sources.is_empty() {
            out.push(Problem::new(
                sources_path.clone(),
                "at least one source is required",
            ));
        }
        // One pass with a map: a document of many sources costs linear time.
        let mut first_of: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(sources.len());
        for (index, source) in sources.iter().enumerate() {
            let Some(source) = source else { continue };
            let first = *first_of.entry(source.id.as_str()).or_insert(index);
            if first != index {
                out.push(Problem::new(
                    join_key(&join_index(&sources_path, index), "id"),
                    format!(
                        "duplicate source id \"{}\" (also sources[{first}])",
                        source.id
                    ),
                ));
            }
        }
    }
    let pool_path = join_key(prefix, "pool_frames");
    let queue_path = join_key(prefix, "queue_depth");
    if let Some(pool) = pool_frames {
        check_range(out, pool_path, pool, &POOL_FRAMES_RANGE);
    }
    if let Some(queue) = queue_depth {
        check_range(out, queue_path.clone(), queue, &QUEUE_DEPTH_RANGE);
    }
    if let (Some(pool), Some(queue)) = (pool_frames, queue_depth)
        && queue >= pool
    {
        out.push(Problem::new(
            queue_path,
            format!(
                "must be less than pool_frames ({pool}), got {queue}: frames waiting in \
                 queues hold pool buffers, so the decoder would stall"
            ),
        ));
    }
}

/// Two record sinks in one directory (or one inside the other) would each count the other's
/// segments against its own disk budget and delete them.
pub(crate) fn check_record_dirs(
    sinks: &[Option<SinkConfig>],
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    let dirs: Vec<(usize, &std::path::Path)> = sinks
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Some(SinkConfig::Record(r)) => Some((i, r.dir.as_path())),
            _ => None,
        })
        .collect();
    // Sorted component-wise, a directory's descendants follow it contiguously, so a stack
    // holds exactly the ancestors of the directory being looked at (a pairwise scan was
    // quadratic: a 1 MB config of sinks took 90 s). Each entry carries the smallest index
    // among its ancestors and, once popped, among its descendants: a sink is reported when
    // an earlier sink (the earliest one named) nests in it or it nests in one — the same
    // verdicts as comparing every pair.
    struct Open<'a> {
        index: usize,
        dir: &'a std::path::Path,
        ancestors_min: usize,
        descendants_min: usize,
    }
    let mut sorted = dirs.clone();
    sorted.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
    let mut stack: Vec<Open<'_>> = Vec::new();
    let mut clash: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    let mut close = |stack: &mut Vec<Open<'_>>| {
        if let Some(e) = stack.pop() {
            let earliest = e.ancestors_min.min(e.descendants_min);
            if earliest < e.index {
                clash.insert(e.index, earliest);
            }
            if let Some(parent) = stack.last_mut() {
                parent.descendants_min = parent.descendants_min.min(e.index).min(e.descendants_min);
            }
        }
    };
    for &(index, dir) in &sorted {
        while stack.last().is_some_and(|a| !dir.starts_with(a.dir)) {
            close(&mut stack);
        }
        let ancestors_min = stack
            .last()
            .map_or(usize::MAX, |a| a.index.min(a.ancestors_min));
        stack.push(Open {
            index,
            dir,
            ancestors_min,
            descendants_min: usize::MAX,
        });
    }
    while !stack.is_empty() {
        close(&mut stack);
    }
    for (i, j) in clash {
        out.push(Problem::new(
            join_key(&join_index(&join_key(prefix, "sinks"), i), "dir"),
            format!(
                "overlaps the directory of sinks[{j}]: each record sink needs its own \
                 directory, or their disk budgets would delete each other's segments"
            ),
        ));
    }
}

/// `#rrggbb` → RGB.
pub fn parse_colour(text: &str) -> Option<[u8; 3]> {
    let hex = text.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some([(v >> 16) as u8, (v >> 8) as u8, v as u8])
}

pub(crate) fn check_inference(inf: &InferenceConfig, prefix: &str, out: &mut Vec<Problem>) {
    check_not_empty(
        out,
        join_key(prefix, "runtime"),
        &inf.runtime.to_string_lossy(),
    );
    check_range(out, join_key(prefix, "max_batch"), inf.max_batch, &(1..=64));
    check_range(out, join_key(prefix, "sessions"), inf.sessions, &(1..=8));
    check_range(
        out,
        join_key(prefix, "batch_window_ms"),
        inf.batch_window_ms,
        &(0..=100),
    );
    check_range(out, join_key(prefix, "threads"), inf.threads, &(0..=256));
    if let Some(core) = inf.tensorrt.dla_core {
        check_range(out, join_key(prefix, "tensorrt.dla_core"), core, &(0..=1));
    }
    if inf.tensorrt.int8 && inf.tensorrt.int8_calibration_table.is_none() {
        out.push(Problem::new(
            join_key(prefix, "tensorrt.int8_calibration_table"),
            "int8 engines need a calibration table",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, m) in inf.models.iter().enumerate() {
        let p = format!("{}[{i}]", join_key(prefix, "models"));
        check_id(out, join_key(&p, "name"), &m.name);
        if !seen.insert(m.name.as_str()) {
            out.push(Problem::new(
                join_key(&p, "name"),
                format!("model {:?} is defined twice", m.name),
            ));
        }
        check_not_empty(out, join_key(&p, "file"), &m.file.to_string_lossy());
        if let Some(sha) = &m.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            out.push(Problem::new(
                join_key(&p, "sha256"),
                "must be 64 hex digits",
            ));
        }
        check_range(
            out,
            join_key(&p, "input_size"),
            m.input_size(),
            &(32..=2048),
        );
        if m.kind == ModelKindConfig::Yolov8 && m.labels.is_none() {
            out.push(Problem::new(
                join_key(&p, "labels"),
                "a yolov8 model needs a labels file (one class name per line)",
            ));
        }
    }
}

/// Every model-using stage names a model of a fitting kind in `inference.models`.
pub(crate) fn check_stage_models(
    pipeline: &PipelineConfig,
    inference: &InferenceConfig,
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    for (i, stage) in pipeline.stages.iter().enumerate() {
        let Some(StageModel { name, kinds }) = stage.model() else {
            continue;
        };
        let path = format!("{}[{i}].model", join_key(prefix, "stages"));
        match inference.models.iter().find(|m| m.name == name) {
            None => out.push(Problem::new(
                path,
                format!("no model {name:?} in inference.models"),
            )),
            Some(m) if !kinds.contains(&m.kind) => out.push(Problem::new(
                path,
                format!(
                    "model {name:?} is a {:?} model; this stage cannot use it",
                    m.kind
                ),
            )),
            Some(_) => {}
        }
    }
}

pub(crate) fn check_sink(sink: &SinkConfig, prefix: &str, out: &mut Vec<Problem>) {
    match sink {
        SinkConfig::Discard(_) => {}
        SinkConfig::Restream(r) => {
            for (i, id) in r.streams.iter().enumerate() {
                check_id(out, format!("{}[{i}]", join_key(prefix, "streams")), id);
            }
        }
        SinkConfig::Push(p) => check_push(p, prefix, out),
        SinkConfig::Hls(h) => check_hls(h, prefix, out),
        SinkConfig::WebRtc(w) => {
            for (i, id) in w.streams.iter().enumerate() {
                check_id(out, format!("{}[{i}]", join_key(prefix, "streams")), id);
            }
            check_range(
                out,
                join_key(prefix, "max_sessions"),
                w.max_sessions,
                &WEBRTC_SESSIONS,
            );
        }
        SinkConfig::Record(record) => {
            check_not_empty(out, join_key(prefix, "dir"), &record.dir.to_string_lossy());
            let segment = join_key(prefix, "segment_seconds");
            if record.segment_seconds.is_finite() {
                check_range(out, segment, record.segment_seconds, &SEGMENT_SECONDS_RANGE);
            } else {
                out.push(Problem::new(segment, "must be a finite number of seconds"));
            }
            if record.disk_budget_mb < MIN_DISK_BUDGET_MB {
                out.push(Problem::new(
                    join_key(prefix, "disk_budget_mb"),
                    format!("must be at least {MIN_DISK_BUDGET_MB}"),
                ));
            }
            check_encoder(&record.encoder, &join_key(prefix, "encoder"), out);
        }
    }
}

/// SRT passphrase lengths libsrt accepts.
const SRT_PASSPHRASE_LEN: RangeInclusive<usize> = 10..=79;

fn check_push(p: &PushSink, prefix: &str, out: &mut Vec<Problem>) {
    let key = |k| join_key(prefix, k);
    check_id(out, key("stream"), &p.stream);
    check_range(out, key("backoff_max_s"), p.backoff_max_s, &(1..=300));
    let url = match NetUrl::parse(&p.url) {
        Ok(u) => u,
        Err(e) => {
            out.push(Problem::new(key("url"), format!("not a valid URL: {e}")));
            return;
        }
    };
    let srt = url.scheme == NetScheme::Srt;
    if !(srt || url.scheme.is_rtmp()) {
        out.push(Problem::new(
            key("url"),
            format!(
                "a push goes to rtmp://, rtmps:// or srt://, not {}://",
                url.scheme.as_str()
            ),
        ));
    }
    if url.user.is_some() || url.password.is_some() {
        out.push(Problem::new(
            key("url"),
            "the URL carries a user name or password: give secrets in stream_key or passphrase",
        ));
    }
    if let Some(q) = &url.query
        && q.split('&').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("passphrase"))
        })
    {
        out.push(Problem::new(
            key("url"),
            "the URL carries an SRT passphrase: give it in passphrase (it is never logged)",
        ));
    }
    if p.stream_key.is_some() && !url.scheme.is_rtmp() {
        out.push(Problem::new(
            key("stream_key"),
            "only an rtmp:// push has a stream key",
        ));
    }
    if let Some(pass) = &p.passphrase {
        if !srt {
            out.push(Problem::new(
                key("passphrase"),
                "only an srt:// push has a passphrase",
            ));
        } else if !SRT_PASSPHRASE_LEN.contains(&pass.expose().chars().count()) {
            out.push(Problem::new(
                key("passphrase"),
                format!(
                    "must have {} to {} characters",
                    SRT_PASSPHRASE_LEN.start(),
                    SRT_PASSPHRASE_LEN.end()
                ),
            ));
        }
    }
    if let Some(k) = &p.stream_key
        && (k.expose().is_empty() || k.expose().contains(['/', '?', '#', ' ']))
    {
        out.push(Problem::new(
            key("stream_key"),
            "must be non-empty, without '/', '?', '#' or spaces",
        ));
    }
}

/// WebRTC sessions at once.
const WEBRTC_SESSIONS: RangeInclusive<u32> = 1..=64;
/// HLS segment length, seconds.
const HLS_SEGMENT_S: RangeInclusive<u32> = 1..=10;
/// HLS part length, ms (when parts are on).
const HLS_PART_MS: RangeInclusive<u32> = 100..=1000;
/// Segments an HLS playlist keeps.
const HLS_SEGMENTS: RangeInclusive<u32> = 3..=30;

fn check_hls(h: &HlsSink, prefix: &str, out: &mut Vec<Problem>) {
    let key = |k: &str| join_key(prefix, k);
    for (i, id) in h.streams.iter().enumerate() {
        check_id(out, format!("{}[{i}]", key("streams")), id);
    }
    check_range(out, key("segment_s"), h.segment_s, &HLS_SEGMENT_S);
    check_range(out, key("segments"), h.segments, &HLS_SEGMENTS);
    if h.part_ms != 0 {
        check_range(out, key("part_ms"), h.part_ms, &HLS_PART_MS);
        if u64::from(h.part_ms) >= u64::from(h.segment_s) * 1000 {
            out.push(Problem::new(
                key("part_ms"),
                format!(
                    "a part ({} ms) must be shorter than a segment ({} s)",
                    h.part_ms, h.segment_s
                ),
            ));
        }
    }
}

/// The streams the restream, HLS and push sinks name are sources of the pipeline; one
/// restream, one HLS and one WebRTC sink at most.
pub(crate) fn check_output_streams(
    sources: &[Option<SourceConfig>],
    sinks: &[Option<SinkConfig>],
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    let ids: Vec<&str> = sources.iter().flatten().map(|s| s.id.as_str()).collect();
    let known = |id: &str, path: String, out: &mut Vec<Problem>| {
        if !ids.contains(&id) {
            out.push(Problem::new(
                path,
                format!(
                    "no source {id:?} in this pipeline (sources: {})",
                    ids.join(", ")
                ),
            ));
        }
    };
    let (mut restreams, mut hls, mut webrtc) = (0, 0, 0);
    for (i, sink) in sinks.iter().enumerate() {
        let path = format!("{}[{i}]", join_key(prefix, "sinks"));
        let (count, kind, streams) = match sink {
            Some(SinkConfig::Restream(r)) => (&mut restreams, "restream", &r.streams),
            Some(SinkConfig::Hls(h)) => (&mut hls, "hls", &h.streams),
            Some(SinkConfig::WebRtc(w)) => (&mut webrtc, "webrtc", &w.streams),
            Some(SinkConfig::Push(p)) => {
                known(&p.stream, format!("{path}.stream"), out);
                continue;
            }
            _ => continue,
        };
        *count += 1;
        if *count > 1 {
            out.push(Problem::new(
                path.clone(),
                format!("a second {kind} sink: list every stream in one"),
            ));
        }
        for (k, id) in streams.iter().enumerate() {
            known(id, format!("{path}.streams[{k}]"), out);
        }
    }
}

/// The most RTSP sessions a server may allow.
const MAX_RTSP_CLIENTS: RangeInclusive<u32> = 1..=256;
/// The shortest RTSP account password.
const MIN_RTSP_PASSWORD: usize = 8;

pub(crate) fn check_outputs(outputs: &OutputsConfig, prefix: &str, out: &mut Vec<Problem>) {
    if let Some(udp) = outputs.webrtc.as_ref().and_then(|w| w.udp.as_ref())
        && !udp.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0)
    {
        out.push(Problem::new(
            join_key(prefix, "webrtc.udp"),
            format!("\"{udp}\" is not a valid IP:PORT address with a port (e.g. 0.0.0.0:8189)"),
        ));
    }
    if let Some(hls) = &outputs.hls {
        check_hls_clients(hls, &join_key(prefix, "hls"), out);
    }
    let Some(rtsp) = &outputs.rtsp else {
        return;
    };
    let key = |k: &str| join_key(prefix, &format!("rtsp.{k}"));
    if rtsp.listen.parse::<SocketAddr>().is_err() {
        out.push(Problem::new(
            key("listen"),
            format!(
                "\"{}\" is not a valid IP:PORT address (e.g. 0.0.0.0:8554)",
                rtsp.listen
            ),
        ));
    }
    check_range(out, key("max_clients"), rtsp.max_clients, &MAX_RTSP_CLIENTS);
    if rtsp.tls && rtsp.udp {
        out.push(Problem::new(
            key("udp"),
            "RTSPS (tls: true) carries the media inside its TLS connection: set udp: false (RTP over UDP would leave it unencrypted)",
        ));
    }
    if rtsp.users.is_empty() && !rtsp.anonymous {
        out.push(Problem::new(
            key("users"),
            "no account: add one (name and password), or set anonymous: true to serve without authentication",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, u) in rtsp.users.iter().enumerate() {
        let p = |k: &str| key(&format!("users[{i}].{k}"));
        if u.name.is_empty() || u.name.chars().count() > 64 || u.name.contains([':', '"']) {
            out.push(Problem::new(
                p("name"),
                "must have 1 to 64 characters, without ':' or '\"'",
            ));
        }
        if !seen.insert(u.name.as_str()) {
            out.push(Problem::new(
                p("name"),
                format!("{:?} is listed twice", u.name),
            ));
        }
        if u.password.expose().chars().count() < MIN_RTSP_PASSWORD {
            out.push(Problem::new(
                p("password"),
                format!("must have at least {MIN_RTSP_PASSWORD} characters"),
            ));
        }
    }
}

/// HLS clients: names fit an HTTP Basic user name and a log line; neither names nor tokens
/// repeat (a token says who is pulling).
fn check_hls_clients(hls: &HlsServerConfig, prefix: &str, out: &mut Vec<Problem>) {
    let (mut names, mut tokens) = (HashSet::new(), HashSet::new());
    for (i, c) in hls.clients.iter().enumerate() {
        let key = |k: &str| join_key(prefix, &format!("clients[{i}].{k}"));
        let valid = (1..=64).contains(&c.name.len())
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            out.push(Problem::new(
                key("name"),
                format!(
                    "{:?}: must have 1 to 64 letters, digits, '.', '_' or '-'",
                    c.name
                ),
            ));
        } else if !names.insert(c.name.as_str()) {
            out.push(Problem::new(
                key("name"),
                format!("{:?} is listed twice", c.name),
            ));
        }
        check_token(c.token.expose(), key("token"), out);
        if !tokens.insert(c.token.expose()) {
            out.push(Problem::new(
                key("token"),
                "the same token as another client: give each client its own",
            ));
        }
    }
}

fn check_encoder(encoder: &EncoderConfig, prefix: &str, out: &mut Vec<Problem>) {
    if !PRESETS.contains(&encoder.preset.as_str()) {
        out.push(Problem::new(
            join_key(prefix, "preset"),
            format!(
                "unknown preset \"{}\", expected one of: {}",
                encoder.preset,
                PRESETS.join(", ")
            ),
        ));
    }
    check_range(
        out,
        join_key(prefix, "bitrate_kbps"),
        encoder.bitrate_kbps,
        &BITRATE_KBPS_RANGE,
    );
    check_range(
        out,
        join_key(prefix, "gop_frames"),
        encoder.gop_frames,
        &GOP_FRAMES_RANGE,
    );
    if encoder.threads > MAX_ENCODER_THREADS {
        out.push(Problem::new(
            join_key(prefix, "threads"),
            format!(
                "must be at most {MAX_ENCODER_THREADS} (0 = automatic), got {}",
                encoder.threads
            ),
        ));
    }
}

pub(crate) fn check_store(store: &StoreConfig, prefix: &str, out: &mut Vec<Problem>) {
    check_not_empty(out, join_key(prefix, "path"), &store.path.to_string_lossy());
    let key = |k| join_key(prefix, k);
    check_range(
        out,
        key("retention_days"),
        store.retention_days,
        &(1..=3650),
    );
    check_range(
        out,
        key("size_budget_mb"),
        store.size_budget_mb,
        &(16..=1 << 20),
    );
    check_range(
        out,
        key("outbox_max_rows"),
        store.outbox_max_rows,
        &(100..=10_000_000),
    );
    check_range(out, key("queue"), store.queue, &(64..=1_000_000));
}

pub(crate) fn check_watchdog(w: &WatchdogConfig, prefix: &str, out: &mut Vec<Problem>) {
    check_range(out, join_key(prefix, "stall_s"), w.stall_s, &(1..=3600));
    check_range(
        out,
        join_key(prefix, "applier_stall_s"),
        w.applier_stall_s,
        &(10..=86_400),
    );
}

pub(crate) fn check_fleet(fleet: &FleetConfig, prefix: &str, out: &mut Vec<Problem>) {
    check_scheme(
        out,
        join_key(prefix, "broker_url"),
        &fleet.broker_url,
        BROKER_SCHEMES,
    );
    check_range(
        out,
        join_key(prefix, "keepalive_s"),
        fleet.keepalive_s,
        &KEEPALIVE_S_RANGE,
    );
    check_range(
        out,
        join_key(prefix, "telemetry_s"),
        fleet.telemetry_s,
        &(1..=3600),
    );
    check_range(
        out,
        join_key(prefix, "inflight"),
        fleet.inflight,
        &(1..=1000),
    );
    if fleet.tls.cert_file.is_some() != fleet.tls.key_file.is_some() {
        out.push(Problem::new(
            join_key(prefix, "tls"),
            "give both cert_file and key_file, or neither",
        ));
    }
    if fleet.password.is_some() && fleet.username.is_none() {
        out.push(Problem::new(
            join_key(prefix, "username"),
            "a password needs a username",
        ));
    }
}

pub(crate) fn check_workflows(w: &WorkflowsConfig, prefix: &str, out: &mut Vec<Problem>) {
    let key = |k: &str| join_key(prefix, k);
    if w.enabled && w.trust.roots.is_empty() {
        out.push(Problem::new(
            key("trust.roots"),
            "workflows are enabled but no root key is given (chimera root init makes root.pub)",
        ));
    }
    if w.trust.threshold == 0
        || (!w.trust.roots.is_empty() && w.trust.threshold as usize > w.trust.roots.len())
    {
        out.push(Problem::new(
            key("trust.threshold"),
            format!(
                "{} root signatures cannot be met by {} root keys (1 to the number of roots)",
                w.trust.threshold,
                w.trust.roots.len()
            ),
        ));
    }
    for (i, a) in w.policy.algorithms.iter().enumerate() {
        if a != "ml-dsa-65" {
            out.push(Problem::new(
                key(&format!("policy.algorithms[{i}]")),
                format!("unknown signature algorithm {a:?} (supported: ml-dsa-65)"),
            ));
        }
    }
    if w.policy.algorithms.is_empty() {
        out.push(Problem::new(
            key("policy.algorithms"),
            "no algorithm allowed: no workflow could ever verify",
        ));
    }
    for (i, d) in w.policy.devices.iter().enumerate() {
        let problem = match d.to_str() {
            Some(text) => check_device_path(text).err().map(|e| e.to_string()),
            None => Some("the device path is not valid UTF-8".to_owned()),
        };
        if let Some(why) = problem {
            out.push(Problem::new(key(&format!("policy.devices[{i}]")), why));
        }
    }
    for (i, p) in w.policy.paths.iter().enumerate() {
        if !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            out.push(Problem::new(
                key(&format!("policy.paths[{i}]")),
                format!("{} must be an absolute path without `..`", p.display()),
            ));
        }
    }
    check_range(
        out,
        key("policy.max_sequence_jump"),
        w.policy.max_sequence_jump,
        &(1..=1_000_000_000),
    );
    check_range(
        out,
        key("policy.max_clock_skew_s"),
        w.policy.max_clock_skew_s,
        &(0..=86_400),
    );
    check_range(
        out,
        key("health.window_s"),
        w.health.window_s,
        &(0.1..=600.0),
    );
    check_range(out, key("health.frames"), w.health.frames, &(1..=10_000));
    check_range(
        out,
        key("health.max_error_ratio"),
        w.health.max_error_ratio,
        &(0.0..=1.0),
    );
    check_range(
        out,
        key("models.mqtt_stall_s"),
        w.models.mqtt_stall_s,
        &(5..=86_400),
    );
    check_firmware(&w.firmware, w.enabled, &key("firmware"), out);
}

fn check_firmware(
    f: &crate::model::FirmwareConfig,
    workflows: bool,
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    if !f.enabled {
        return;
    }
    let key = |k: &str| join_key(prefix, k);
    if !workflows {
        out.push(Problem::new(
            key("enabled"),
            "firmware orders need workflows.enabled (the same trust, keys and receipts)",
        ));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !s.starts_with(['.', '-'])
    };
    for (k, v) in [("image", &f.image), ("board", &f.board)] {
        if !name_ok(v) {
            out.push(Problem::new(
                key(k),
                format!(
                    "{v:?}: firmware updates need this device's {k} (1 to 64 of A-Z a-z 0-9 . _ -)"
                ),
            ));
        }
    }
    check_range(out, key("max_image_mb"), f.max_image_mb, &(1..=65_536));
    check_range(out, key("trial_s"), f.trial_s, &(1..=86_400));
    check_range(
        out,
        key("helper_timeout_s"),
        f.helper_timeout_s,
        &(5..=86_400),
    );
    check_range(
        out,
        key("swupdate.max_attempts"),
        f.swupdate.max_attempts,
        &(1..=7),
    );
    check_range(
        out,
        key("swupdate.timeout_s"),
        f.swupdate.timeout_s,
        &(10..=86_400),
    );
    if f.swupdate.reboot_command.is_empty() {
        out.push(Problem::new(
            key("swupdate.reboot_command"),
            "no reboot command: a firmware update could never boot its image",
        ));
    }
    if f.updater == crate::model::FirmwareUpdaterKind::Simulated && f.simulated_board.is_none() {
        out.push(Problem::new(
            key("simulated_board"),
            "the simulated updater needs its board file",
        ));
    }
}

pub(crate) fn check_web(web: &WebConfig, prefix: &str, out: &mut Vec<Problem>) {
    if web.listen.parse::<SocketAddr>().is_err() {
        out.push(Problem::new(
            join_key(prefix, "listen"),
            format!(
                "\"{}\" is not a valid IP:PORT address (e.g. 127.0.0.1:8080 or [::]:8080)",
                web.listen
            ),
        ));
    }
}

pub(crate) fn check_sensors(sensors: &SensorsConfig, prefix: &str, out: &mut Vec<Problem>) {
    let key = |k: &str| join_key(prefix, k);
    if let Some(gps) = &sensors.gps {
        check_scheme(out, key("gps.url"), &gps.url, GPS_SCHEMES);
    }
    if let Some(imu) = &sensors.imu {
        check_scheme(out, key("imu.url"), &imu.url, IMU_SCHEMES);
        check_range(out, key("imu.rate_hz"), imu.rate_hz, &(1.0..=1000.0));
        for (i, a) in imu.mounting_ypr_deg.iter().enumerate() {
            check_range(
                out,
                key(&format!("imu.mounting_ypr_deg[{i}]")),
                *a,
                &(-360.0..=360.0),
            );
        }
    }
    check_scheme(
        out,
        key("iot_broker_url"),
        &sensors.iot_broker_url,
        BROKER_SCHEMES,
    );
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in sensors.iot.iter().enumerate() {
        let p = format!("iot[{i}]");
        check_id(out, key(&format!("{p}.name")), &s.name);
        if names.contains(&s.name.as_str()) || s.name == "speed" {
            out.push(Problem::new(
                key(&format!("{p}.name")),
                format!("{:?} is used twice (or reserved)", s.name),
            ));
        }
        names.push(&s.name);
        if s.topic.is_empty() || s.topic.contains(['+', '#']) {
            out.push(Problem::new(
                key(&format!("{p}.topic")),
                "a topic without wildcards is needed",
            ));
        }
        if let (Some(lo), Some(hi)) = (s.min, s.max)
            && lo >= hi
        {
            out.push(Problem::new(
                key(&format!("{p}.max")),
                format!("{hi} is not above min {lo}"),
            ));
        }
    }
    let f = &sensors.fusion;
    check_range(out, key("fusion.uere_m"), f.uere_m, &(0.01..=1000.0));
    check_range(
        out,
        key("fusion.accel_noise"),
        f.accel_noise,
        &(0.001..=100.0),
    );
    check_range(
        out,
        key("fusion.gyro_noise"),
        f.gyro_noise,
        &(0.00001..=10.0),
    );
    check_range(out, key("fusion.gate"), f.gate, &(1.0..=10_000.0));
    check_range(out, key("fusion.reorder_ms"), f.reorder_ms, &(0..=10_000));
    check_rules(&sensors.rules, &key("rules"), out);
    check_rule_sensors(&sensors.rules, &names, &key("rules"), out);
}

/// Rules: names, durations and conditions (sensor names: [`check_rule_sensors`]).
pub(crate) fn check_rules(rules: &[RuleConfig], prefix: &str, out: &mut Vec<Problem>) {
    let mut rule_names: Vec<&str> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let p = join_index(prefix, i);
        check_id(out, join_key(&p, "name"), &r.name);
        if rule_names.contains(&r.name.as_str()) {
            out.push(Problem::new(
                join_key(&p, "name"),
                format!("rule {:?} twice", r.name),
            ));
        }
        rule_names.push(&r.name);
        check_range(out, join_key(&p, "for_s"), r.for_s, &(0.0..=86_400.0));
        check_condition(&r.when, &join_key(&p, "when"), None, out);
    }
}

/// That every sensor the rules name is one of `sensors` (a workflow's rules are checked
/// against the device's sensors when it is applied).
pub fn check_rule_sensors(
    rules: &[RuleConfig],
    sensors: &[&str],
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    let mut inner = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        check_condition(
            &r.when,
            &join_key(&join_index(prefix, i), "when"),
            Some(sensors),
            &mut inner,
        );
    }
    // Only the sensor-name problems (the rest was reported by check_rules).
    out.extend(
        inner
            .into_iter()
            .filter(|p| p.path.ends_with("sensor.name")),
    );
}

fn check_comparison(c: &Comparison, path: &str, out: &mut Vec<Problem>) {
    if [c.eq, c.gt, c.lt, c.ge, c.le].iter().all(Option::is_none) {
        out.push(Problem::new(
            path,
            "give at least one of eq, gt, lt, ge, le",
        ));
    }
}

fn check_condition(c: &Condition, path: &str, sensors: Option<&[&str]>, out: &mut Vec<Problem>) {
    match c {
        Condition::All(v) | Condition::Any(v) => {
            let path = join_key(
                path,
                if matches!(c, Condition::All(_)) {
                    "all"
                } else {
                    "any"
                },
            );
            if v.is_empty() {
                out.push(Problem::new(path.clone(), "an empty list"));
            }
            for (i, c) in v.iter().enumerate() {
                check_condition(c, &join_index(&path, i), sensors, out);
            }
        }
        Condition::Not(c) => check_condition(c, &join_key(path, "not"), sensors, out),
        Condition::Track(t) => {
            if let Some(z) = &t.zone {
                check_polygon(z, &join_key(path, "track.zone"), out);
            }
        }
        Condition::Moderation(_) => {}
        Condition::Sensor(s) => {
            if let Some(sensors) = sensors
                && !sensors.contains(&s.name.as_str())
            {
                out.push(Problem::new(
                    join_key(path, "sensor.name"),
                    format!(
                        "no iot sensor {:?} (declared: {})",
                        s.name,
                        sensors.join(", ")
                    ),
                ));
            }
            check_comparison(&s.compare, &join_key(path, "sensor"), out);
        }
        Condition::Speed(c) => check_comparison(c, &join_key(path, "speed"), out),
    }
}

/// Levels a log filter may name (case-insensitive).
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `log.level`, through [`check_log_filter`].
pub(crate) fn check_log(log: &LogConfig, prefix: &str, out: &mut Vec<Problem>) {
    let path = join_key(prefix, "level");
    if log.level.trim().is_empty() {
        check_not_empty(out, path, &log.level);
        return;
    }
    if let Err(reason) = check_log_filter(&log.level) {
        out.push(Problem::new(path, reason));
    }
}

/// Checks a log filter: comma-separated directives, each a level (`off`, `error`, `warn`,
/// `info`, `debug`, `trace`, any case) or `target=level`. Refused, naming the offending
/// directive: an empty filter, a bare word that is not a level (`verbose`: tracing would read
/// it as a target and log nothing else), a directive without a target (`=debug`) or with a
/// level that is not one. `log.level` goes through it, and so does every filter the agent
/// installs at run time (fleet command, toggle, `RUST_LOG`).
pub fn check_log_filter(spec: &str) -> Result<(), String> {
    let is_level = |w: &str| LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(w.trim()));
    let levels = LOG_LEVELS.join(", ");
    let mut directives = spec.split(',').map(str::trim).filter(|d| !d.is_empty());
    let mut any = false;
    directives.try_for_each(|d| {
        any = true;
        match d.rsplit_once('=') {
            None if is_level(d) => Ok(()),
            None if d
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-')) =>
            {
                Err(format!(
                    "{d:?} is not a log level ({levels}); a target needs one, e.g. {d}=debug"
                ))
            }
            None => Err(format!("{d:?} is not a log level ({levels})")),
            Some((target, _)) if target.trim().is_empty() => Err(format!("{d:?} names no target")),
            Some((_, level)) if !is_level(level) => Err(format!(
                "{:?} in {d:?} is not a log level ({levels})",
                level.trim()
            )),
            Some((target, _)) => match target.trim().chars().next() {
                Some(c) if c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '[') => Ok(()),
                _ => Err(format!(
                    "{d:?}: a target starts with a letter, digit, _ or :"
                )),
            },
        }
    })?;
    if any {
        Ok(())
    } else {
        Err(format!(
            "{spec:?} holds no directive: give a level ({levels})"
        ))
    }
}

#[cfg(test)]
mod log_level_tests {
    use super::*;

    fn problems(level: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let log = LogConfig {
            level: level.into(),
            ..LogConfig::default()
        };
        check_log(&log, "log", &mut out);
        out
    }

    #[test]
    fn levels_and_target_directives_pass() {
        for ok in [
            "info",
            "WARN",
            "warn,aegis_agent=debug",
            "aegis_agent::fleet=Trace,",
        ] {
            assert!(problems(ok).is_empty(), "{ok:?}: {:?}", problems(ok));
        }
    }

    #[test]
    fn a_word_that_is_not_a_level_is_named() {
        for (bad, named) in [
            ("verbose", "\"verbose\" is not a log level"),
            ("info,verbose", "\"verbose\" is not a log level"),
            ("*info", "\"*info\" is not a log level"),
            ("aegis_agent=loud", "\"loud\" in \"aegis_agent=loud\""),
            ("=info", "names no target"),
            ("*x=info", "a target starts with"),
            (",", "holds no directive"),
            ("", "must not be empty"),
        ] {
            let p = problems(bad);
            assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
            assert_eq!(p[0].path, "log.level");
            assert!(p[0].reason.contains(named), "{bad:?}: {}", p[0].reason);
        }
    }
}
