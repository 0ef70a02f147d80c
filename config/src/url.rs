//! Network source URLs (`rtsp`, `rtsps`, `rtmp`, `rtmps`, `srt`), parsed once, strictly.
//!
//! The device policy compares a source's host with its allow-list, and libavformat then
//! connects somewhere. Those two must be the same place. libavformat splits URLs its own way
//! (`av_url_split`: the authority ends at the first `/`, `?` or `#`, the user information runs
//! to the *last* `@`, the port is `atoi` of whatever follows the first `:`, host names are
//! copied into fixed buffers) and `getaddrinfo` accepts numeric shorthands (`127.1`,
//! `0x7f.0.0.1`, `2130706433`). So this module accepts only an unambiguous subset of
//! RFC 3986, rejects everything else with the reason and its byte offset, and
//! [`NetUrl::to_libav`] re-serialises the parsed URL canonically: what the policy checked is
//! exactly what libavformat opens.
//!
//! # Grammar
//!
//! ```text
//! url        = scheme "://" authority path [ "?" query ]
//! scheme     = "rtsp" / "rtsps" / "rtmp" / "rtmps" / "srt"        ; any case
//! authority  = [ userinfo "@" ] host [ ":" port ]
//! userinfo   = user [ ":" password ]
//! user       = 1*( unreserved / pct-encoded / sub-delims )          ; no ":"
//! password   = *( unreserved / pct-encoded / sub-delims / ":" )
//! host       = "[" IPv6address "]"                                  ; std's parser, no zone id
//!            / dec-octet "." dec-octet "." dec-octet "." dec-octet  ; no leading zeros
//!            / label *( "." label )     ; LDH, 1..=63 each, <= 253 in all, last label
//!                                       ; neither all digits nor starting with "0x"
//! label      = alnum [ *( alnum / "-" ) alnum ]
//! port       = 1*5DIGIT                                             ; 1..=65535
//! path       = *( "/" *pchar )
//! query      = *( pchar / "/" / "?" )
//! pchar      = unreserved / pct-encoded / sub-delims / ":" / "@"
//! unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
//! sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
//! pct-encoded = "%" HEXDIG HEXDIG
//! ```
//!
//! Further rules: ASCII only, at most [`MAX_URL_LEN`] bytes, no whitespace or control
//! characters, no `\`, no `#` fragment, no `%` in the host; decoded user names and passwords
//! are UTF-8 without control characters, and a user name holds no `:`. Per scheme:
//!
//! * `rtsp`/`rtsps`: the encoded user information fits libavformat's 127-byte buffer; the
//!   query may not carry the RTSP transport options that libavformat releases have read from
//!   the URL (`udp`, `tcp`, `multicast`, `http`, `https`, `filter_src`, `listen`,
//!   `prefer_tcp`, `udp_multicast`): the source's `transport` field chooses the transport.
//! * `rtmp`/`rtmps`: libavformat's RTMP client does not percent-decode credentials, so the
//!   user name and password may hold only unreserved characters (no `%`, no sub-delims, no
//!   second `:`), at most 49 bytes each: their canonical form is then the text itself.
//! * `srt`: a port is required; no user information (SRT's secret is `?passphrase=`).
//! * `rtsps`/`rtmps`: the host has at most 199 bytes (libavformat's TLS layer keeps 200).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::Secret;

/// Longest URL accepted, in bytes (libavformat keeps paths and host names in 1024-byte
/// buffers).
pub const MAX_URL_LEN: usize = 1024;

/// Longest host name, in bytes (DNS limit).
pub const MAX_HOST_LEN: usize = 253;

/// Longest host name for the TLS schemes (`rtsps`, `rtmps`): libavformat's TLS layer copies
/// it into a 200-byte buffer.
pub const MAX_TLS_HOST_LEN: usize = 199;

/// Longest percent-encoded `user:password` for RTSP (libavformat's 128-byte buffer).
pub const MAX_RTSP_USERINFO_LEN: usize = 127;

/// Longest RTMP user name and password, each (libavformat's 50-byte buffers).
pub const MAX_RTMP_CREDENTIAL_LEN: usize = 49;

/// Query keys whose value is a secret (compared without regard to case).
pub const SECRET_QUERY_KEYS: &[&str] = &[
    "passphrase",
    "password",
    "pass",
    "pwd",
    "token",
    "key",
    "secret",
    "auth",
];

/// RTSP transport options that libavformat releases have taken from the URL's query; the
/// source's `transport` field is the one place that chooses the transport.
pub const RTSP_RESERVED_QUERY_KEYS: &[&str] = &[
    "udp",
    "tcp",
    "multicast",
    "udp_multicast",
    "http",
    "https",
    "filter_src",
    "listen",
    "prefer_tcp",
];

/// The scheme of a network source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetScheme {
    /// RTSP over TCP (port 554 by default).
    Rtsp,
    /// RTSP over TLS (port 322 by default).
    Rtsps,
    /// RTMP (port 1935 by default).
    Rtmp,
    /// RTMP over TLS (port 443 by default).
    Rtmps,
    /// SRT (a port is required).
    Srt,
}

impl NetScheme {
    /// The scheme as written in canonical URLs (lowercase).
    pub fn as_str(self) -> &'static str {
        match self {
            NetScheme::Rtsp => "rtsp",
            NetScheme::Rtsps => "rtsps",
            NetScheme::Rtmp => "rtmp",
            NetScheme::Rtmps => "rtmps",
            NetScheme::Srt => "srt",
        }
    }

    /// The scheme named `name` (any case).
    pub fn from_name(name: &str) -> Option<NetScheme> {
        [
            NetScheme::Rtsp,
            NetScheme::Rtsps,
            NetScheme::Rtmp,
            NetScheme::Rtmps,
            NetScheme::Srt,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether the scheme runs over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, NetScheme::Rtsps | NetScheme::Rtmps)
    }

    /// Whether this is RTSP or RTSPS.
    pub fn is_rtsp(self) -> bool {
        matches!(self, NetScheme::Rtsp | NetScheme::Rtsps)
    }

    /// Whether this is RTMP or RTMPS.
    pub fn is_rtmp(self) -> bool {
        matches!(self, NetScheme::Rtmp | NetScheme::Rtmps)
    }
}

impl std::fmt::Display for NetScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host of a network URL, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: lowercase letter-digit-hyphen labels of 1 to 63 bytes, 253 bytes at most.
    Domain(String),
    /// An IPv4 address, written as a canonical dotted quad.
    Ipv4(Ipv4Addr),
    /// An IPv6 address, written in brackets in URLs.
    Ipv6(Ipv6Addr),
}

impl Host {
    /// Parses a host as it appears in a URL's authority (`cam.example`, `10.0.0.5`,
    /// `[::1]`, or `::1` without brackets) by the rules of [`NetUrl::parse`]: a canonical
    /// dotted quad, an IPv6 address, or a DNS name of letter-digit-hyphen labels; numeric
    /// forms a resolver would read differently (`127.1`, `0x7f.1`, `010.0.0.1`),
    /// percent-encoding and zone ids are refused. For URLs of other schemes (the model
    /// downloader's `http(s)`), so that what an allow-list checks is what is connected to.
    pub fn parse(text: &str) -> Result<Host, UrlError> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| at(0, "'[' without a closing ']'"))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(Host::Ipv6)
                .map_err(|_| at(1, format!("\"{inner}\" is not an IPv6 address")));
        }
        if text.contains(':') {
            return text
                .parse::<Ipv6Addr>()
                .map(Host::Ipv6)
                .map_err(|_| at(0, format!("\"{text}\" is not an IPv6 address")));
        }
        parse_reg_host(text, 0, None)
    }
}

impl std::fmt::Display for Host {
    /// The host as the policy sees it: `cam.example`, `10.0.0.5`, `::1` (no brackets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "{a}"),
        }
    }
}

/// A parsed network source URL. Only [`NetUrl::parse`] makes one, so every value satisfies
/// the grammar of this module; `Debug` shows the [redacted](NetUrl::redacted) form.
#[derive(Clone, PartialEq, Eq)]
pub struct NetUrl {
    /// The scheme.
    pub scheme: NetScheme,
    /// The user name of the URL's user information, percent-decoded.
    pub user: Option<String>,
    /// The password of the URL's user information, percent-decoded.
    pub password: Option<Secret>,
    /// The host.
    pub host: Host,
    /// The port, when the URL names one.
    pub port: Option<u16>,
    /// The path, as written (percent-encoding kept): empty or starting with `/`.
    pub path: String,
    /// The query after `?`, as written (percent-encoding kept).
    pub query: Option<String>,
}

impl std::fmt::Debug for NetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NetUrl({})", self.redacted())
    }
}

/// An error message naming the problem and, where there is one, its byte offset (counted
/// from 0).
/// Why a URL (or a source's location) was refused: the problem, and where it is when it is
/// at one place of the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .at.map(|p| format!(" at byte {p}")).unwrap_or_default())]
pub struct UrlError {
    /// What is wrong.
    pub message: String,
    /// Byte offset of the problem in the text, when it has one.
    pub at: Option<usize>,
}

impl UrlError {
    /// A problem of the whole text.
    pub fn new(message: impl Into<String>) -> UrlError {
        UrlError {
            message: message.into(),
            at: None,
        }
    }
}

impl From<String> for UrlError {
    fn from(message: String) -> UrlError {
        UrlError::new(message)
    }
}

impl From<&str> for UrlError {
    fn from(message: &str) -> UrlError {
        UrlError::new(message)
    }
}

fn at(pos: usize, what: impl std::fmt::Display) -> UrlError {
    UrlError {
        message: what.to_string(),
        at: Some(pos),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'%')
}

/// Every byte [`NetUrl::to_libav`] may write: RFC 3986's characters less `#`.
pub fn is_safe_url_byte(b: u8) -> bool {
    is_pchar(b) || matches!(b, b'/' | b'?' | b'[' | b']')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` (already checked: every `%` has two hex digits). `base` is the byte
/// offset of `s` in the URL, for messages.
fn decode(s: &str, base: usize, what: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err(at(
                    base + i,
                    "'%' is not followed by two hexadecimal digits",
                ));
            };
            let v = h * 16 + l;
            if v < 0x20 || v == 0x7f {
                return Err(at(
                    base + i,
                    format!("the {what} holds an encoded control character"),
                ));
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        at(
            base,
            format!("the percent-decoded {what} is not valid UTF-8"),
        )
    })
}

/// Percent-encodes every byte except unreserved ones (uppercase hex digits).
fn encode(s: &str, out: &mut String) {
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
}

fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| if is_unreserved(b) { 1 } else { 3 })
        .sum()
}

/// A canonical dotted quad: four decimal numbers 0..=255 without leading zeros.
fn dotted_quad(host: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = host.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        let canonical = !p.is_empty()
            && p.len() <= 3
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p == "0" || !p.starts_with('0'));
        if !canonical {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// Parses a host that is not in brackets (`base` is its byte offset in the URL).
fn parse_reg_host(raw: &str, base: usize, scheme: Option<NetScheme>) -> Result<Host, UrlError> {
    if raw.is_empty() {
        return Err(at(base, "the host is missing"));
    }
    if let Some(i) = raw
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        let c = raw.as_bytes()[i] as char;
        let why = match c {
            '%' => "percent-encoding is not allowed in the host".to_owned(),
            '[' | ']' => format!("'{c}' is only allowed around an IPv6 address ([::1])"),
            _ => format!("invalid character '{c}' in the host (letters, digits, '-' and '.' only)"),
        };
        return Err(at(base + i, why));
    }
    let host = raw.to_ascii_lowercase();
    let last = host.rsplit('.').next().unwrap_or_default();
    if !last.is_empty() && (last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x")) {
        return dotted_quad(&host).map(Host::Ipv4).ok_or_else(|| {
            at(
                base,
                format!(
                    "ambiguous numeric host \"{host}\": write an IPv4 address as four decimal \
                     numbers without leading zeros (a.b.c.d)"
                ),
            )
        });
    }
    let limit = match scheme {
        Some(s) if s.is_tls() => MAX_TLS_HOST_LEN,
        _ => MAX_HOST_LEN,
    };
    if host.len() > limit {
        let what = scheme.map(|s| format!(" for {s}")).unwrap_or_default();
        return Err(at(
            base,
            format!(
                "the host name has {} bytes; at most {limit} are allowed{what}",
                host.len()
            ),
        ));
    }
    let mut offset = base;
    for label in host.split('.') {
        if label.is_empty() {
            return Err(at(
                offset,
                "empty label in the host name (leading, trailing or doubled '.')",
            ));
        }
        if label.len() > 63 {
            return Err(at(
                offset,
                format!("a host name label has {} bytes (at most 63)", label.len()),
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(at(
                offset,
                "a host name label may not start or end with '-'",
            ));
        }
        offset += label.len() + 1;
    }
    Ok(Host::Domain(host))
}

impl NetUrl {
    /// Parses `text`; the error names the problem and its byte offset.
    pub fn parse(text: &str) -> Result<NetUrl, UrlError> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > MAX_URL_LEN {
            return Err(format!(
                "the URL has {} bytes; at most {MAX_URL_LEN} are allowed",
                text.len()
            )
            .into());
        }
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let why = match b {
                0x80.. => "non-ASCII character (percent-encode it)",
                b' ' => "space (percent-encode it as %20)",
                0..=0x1f | 0x7f => "whitespace or control character",
                b'\\' => "backslash",
                b'#' => "'#': source URLs may not have a fragment",
                b'%' => {
                    let ok = bytes.get(i + 1).copied().and_then(hex_val).is_some()
                        && bytes.get(i + 2).copied().and_then(hex_val).is_some();
                    if ok {
                        continue;
                    }
                    "'%' is not followed by two hexadecimal digits"
                }
                _ => continue,
            };
            return Err(at(i, why));
        }
        let Some(colon) = text.find(':') else {
            return Err(
                "missing scheme: expected rtsp://, rtsps://, rtmp://, rtmps:// or srt://".into(),
            );
        };
        let name = &text[..colon];
        let scheme = NetScheme::from_name(name).ok_or_else(|| {
            format!(
                "unsupported scheme \"{name}\" (network sources: rtsp, rtsps, rtmp, rtmps, srt)"
            )
        })?;
        if !text[colon..].starts_with("://") {
            return Err(at(
                colon + 1,
                format!("expected \"//\" after \"{name}:\" ({scheme}://host/...)"),
            ));
        }
        let auth_start = colon + 3;
        let rest = &text[auth_start..];
        // libavformat ends the authority at the first '/', '?' or '#' ('#' is refused above).
        let auth_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..auth_len];
        let after = &rest[auth_len..];

        // User information: everything before the one '@'.
        let ats: Vec<usize> = authority.match_indices('@').map(|(i, _)| i).collect();
        let (userinfo, host_port, hp_start) = match ats.as_slice() {
            [] => (None, authority, auth_start),
            [one] => (
                Some(&authority[..*one]),
                &authority[one + 1..],
                auth_start + one + 1,
            ),
            [first, second, ..] => {
                return Err(format!(
                    "more than one '@' in the authority (at bytes {} and {}): percent-encode \
                     '@' in a user name or password as %40",
                    auth_start + first,
                    auth_start + second
                )
                .into());
            }
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = parse_userinfo(ui, auth_start, scheme)?;
                (Some(u), p)
            }
        };

        // Host and port.
        let (host, port_text, port_start) = if host_port.starts_with('[') {
            let Some(close) = host_port.find(']') else {
                return Err(at(hp_start, "'[' without a closing ']'"));
            };
            let inner = &host_port[1..close];
            if let Some(i) = inner.find('%') {
                return Err(at(
                    hp_start + 1 + i,
                    "IPv6 zone ids ('%') are not supported",
                ));
            }
            let addr: Ipv6Addr = inner
                .parse()
                .map_err(|_| at(hp_start + 1, format!("\"{inner}\" is not an IPv6 address")))?;
            let tail = &host_port[close + 1..];
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p),
                None if tail.is_empty() => None,
                None => {
                    return Err(at(
                        hp_start + close + 1,
                        "expected ':' and a port after ']'",
                    ));
                }
            };
            (Host::Ipv6(addr), port, hp_start + close + 2)
        } else {
            let (h, p) = match host_port.find(':') {
                Some(c) => (&host_port[..c], Some(&host_port[c + 1..])),
                None => (host_port, None),
            };
            (
                parse_reg_host(h, hp_start, Some(scheme))?,
                p,
                hp_start + h.len() + 1,
            )
        };
        let port = match port_text {
            None => None,
            Some(p) => Some(parse_port(p, port_start)?),
        };
        if scheme == NetScheme::Srt && port.is_none() {
            return Err("srt URLs need a port (srt://host:port)".into());
        }

        // Path and query.
        let after_start = auth_start + auth_len;
        let (path, query) = match after.find('?') {
            Some(q) => (&after[..q], Some(&after[q + 1..])),
            None => (after, None),
        };
        if let Some(i) = path.bytes().position(|b| !(is_pchar(b) || b == b'/')) {
            return Err(at(
                after_start + i,
                format!(
                    "invalid character '{}' in the path",
                    path.as_bytes()[i] as char
                ),
            ));
        }
        if let Some(q) = query {
            let q_start = after_start + path.len() + 1;
            if let Some(i) = q
                .bytes()
                .position(|b| !(is_pchar(b) || b == b'/' || b == b'?'))
            {
                return Err(at(
                    q_start + i,
                    format!(
                        "invalid character '{}' in the query",
                        q.as_bytes()[i] as char
                    ),
                ));
            }
            // libavformat's RTSP demuxer takes its own options after the *last* `?`
            // (`strrchr`): a second `?` would hide a transport option from the key check.
            if scheme.is_rtsp()
                && let Some(i) = q.bytes().position(|b| b == b'?')
            {
                return Err(at(
                    q_start + i,
                    "a second '?' in an RTSP query is ambiguous (libavformat reads its options \
                     after the last one)",
                ));
            }
            if scheme.is_rtsp()
                && let Some(k) = query_keys(q).find(|k| {
                    RTSP_RESERVED_QUERY_KEYS
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(k))
                })
            {
                // `k` is a slice of `q`: its offset in the URL follows.
                let offset = q_start + (k.as_ptr() as usize - q.as_ptr() as usize);
                return Err(at(
                    offset,
                    format!(
                        "the query option \"{k}\" chooses libavformat's RTSP transport: use \
                         the source's `transport` field (tcp or udp) instead"
                    ),
                ));
            }
        }
        let url = NetUrl {
            scheme,
            user,
            password,
            host,
            port,
            path: path.to_owned(),
            query: query.map(str::to_owned),
        };
        let canonical = url.to_libav(None, None).len();
        if canonical > MAX_URL_LEN {
            return Err(format!(
                "the URL has {canonical} bytes in canonical form (user information \
                 percent-encoded); at most {MAX_URL_LEN} are allowed"
            )
            .into());
        }
        Ok(url)
    }

    /// The host as the policy compares it: `cam.example`, `10.0.0.5`, `::1`.
    pub fn host_str(&self) -> String {
        self.host.to_string()
    }

    /// Whether the URL carries user information (a user name, maybe a password).
    pub fn has_userinfo(&self) -> bool {
        self.user.is_some() || self.password.is_some()
    }

    /// The query keys, as written, whose values are secrets ([`SECRET_QUERY_KEYS`], any case,
    /// percent-encoding decoded for the comparison).
    pub fn secret_query_keys(&self) -> Vec<String> {
        let Some(q) = &self.query else {
            return Vec::new();
        };
        query_keys(q)
            .filter(|k| {
                let decoded = decode(k, 0, "query key").unwrap_or_else(|_| (*k).to_owned());
                SECRET_QUERY_KEYS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&decoded))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The canonical URL handed to libavformat: lowercase scheme, canonical host (IPv6 in
    /// brackets), user information percent-encoded with only unreserved characters left
    /// as they are, `:port` only when one was given, the path, `?query`.
    ///
    /// A configured `user` (non-empty) replaces the URL's user information, together with
    /// `password` (which may be `None`); without one the URL's own user information is kept.
    /// The result contains only the bytes [`is_safe_url_byte`] accepts, and
    /// `NetUrl::parse(&u.to_libav(None, None)) == Ok(u)`. (libavformat decodes the encoding
    /// for RTSP only; configuration validation allows `username`/`password` fields only on
    /// RTSP sources.)
    pub fn to_libav(&self, user: Option<&str>, password: Option<&Secret>) -> String {
        let (user, password) = match user.filter(|u| !u.is_empty()) {
            Some(u) => (Some(u), password),
            None => (self.user.as_deref(), self.password.as_ref()),
        };
        let mut out = String::with_capacity(64 + self.path.len());
        out.push_str(self.scheme.as_str());
        out.push_str("://");
        if let Some(u) = user {
            encode(u, &mut out);
            if let Some(p) = password {
                out.push(':');
                encode(p.expose(), &mut out);
            }
            out.push('@');
        }
        self.push_host_port(&mut out);
        out.push_str(&self.path);
        if let Some(q) = &self.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    fn push_host_port(&self, out: &mut String) {
        match &self.host {
            Host::Ipv6(a) => {
                out.push('[');
                out.push_str(&a.to_string());
                out.push(']');
            }
            h => out.push_str(&h.to_string()),
        }
        if let Some(p) = self.port {
            out.push(':');
            out.push_str(&p.to_string());
        }
    }

    /// The URL as logs, errors and status pages show it: no user information, the query
    /// replaced by `?***`, and for RTMP the last path segment (the stream key) as `***`.
    pub fn redacted(&self) -> String {
        let mut out = format!("{}://", self.scheme);
        self.push_host_port(&mut out);
        let path = match self.path.rfind('/') {
            Some(i) if self.scheme.is_rtmp() && i > 0 && i + 1 < self.path.len() => {
                format!("{}/***", &self.path[..i])
            }
            _ => self.path.clone(),
        };
        out.push_str(&path);
        if self.query.is_some() {
            out.push_str("?***");
        }
        out
    }
}

/// Keys of a query (`a=1&b&c=2` → `a`, `b`, `c`), as written.
fn query_keys(q: &str) -> impl Iterator<Item = &str> {
    q.split('&')
        .map(|kv| kv.split('=').next().unwrap_or_default())
        .filter(|k| !k.is_empty())
}

fn parse_port(p: &str, start: usize) -> Result<u16, UrlError> {
    if p.is_empty() {
        return Err(at(start, "the port after ':' is empty"));
    }
    if let Some(i) = p.bytes().position(|b| !b.is_ascii_digit()) {
        return Err(at(
            start + i,
            format!(
                "invalid character '{}' in the port (digits only)",
                p.as_bytes()[i] as char
            ),
        ));
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.len() <= 5 => Ok(n),
        _ => Err(at(start, format!("port {p} is not between 1 and 65535"))),
    }
}

/// Splits and decodes `user[:password]`; `base` is its byte offset in the URL.
fn parse_userinfo(
    ui: &str,
    base: usize,
    scheme: NetScheme,
) -> Result<(String, Option<Secret>), UrlError> {
    if ui.is_empty() {
        return Err(at(base, "empty user information before '@'"));
    }
    if scheme == NetScheme::Srt {
        return Err(
            "srt URLs carry no user information: SRT's secret is the ?passphrase= option".into(),
        );
    }
    if let Some(i) = ui
        .bytes()
        .position(|b| !(is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'%'))
    {
        return Err(at(
            base + i,
            format!(
                "'{}' in the user information must be percent-encoded",
                ui.as_bytes()[i] as char
            ),
        ));
    }
    let (u, p) = match ui.find(':') {
        Some(c) => (&ui[..c], Some((&ui[c + 1..], base + c + 1))),
        None => (ui, None),
    };
    if u.is_empty() {
        return Err(at(base, "empty user name before ':'"));
    }
    // RTMP: libavformat splits at the first ':' and uses the rest as it is.
    let separator = ui.find(':');
    if scheme.is_rtmp()
        && let Some(i) = ui
            .bytes()
            .enumerate()
            .position(|(i, b)| !(is_unreserved(b) || Some(i) == separator))
    {
        return Err(at(
            base + i,
            "rtmp credentials may only hold letters, digits and - . _ ~ (libavformat's RTMP \
             client does not decode percent-encoding)",
        ));
    }
    let user = decode(u, base, "user name")?;
    if user.contains(':') {
        return Err(at(base, "the user name may not contain ':' (%3A)"));
    }
    let password = match p {
        Some((p, p_base)) => Some(Secret::new(decode(p, p_base, "password")?)),
        None => None,
    };
    if scheme.is_rtsp() {
        let len = encoded_len(&user) + password.as_ref().map_or(0, |p| 1 + encoded_len(p.expose()));
        if len > MAX_RTSP_USERINFO_LEN {
            return Err(at(
                base,
                format!(
                    "the user information takes {len} bytes percent-encoded; libavformat keeps \
                     at most {MAX_RTSP_USERINFO_LEN} (use the source's username and password)"
                ),
            ));
        }
    }
    if scheme.is_rtmp()
        && (user.len() > MAX_RTMP_CREDENTIAL_LEN
            || password
                .as_ref()
                .is_some_and(|p| p.expose().len() > MAX_RTMP_CREDENTIAL_LEN))
    {
        return Err(at(
            base,
            format!(
                "rtmp user names and passwords may have at most {MAX_RTMP_CREDENTIAL_LEN} bytes \
                 each (libavformat cuts longer ones)"
            ),
        ));
    }
    Ok((user, password))
}

/// What libavformat's `av_url_split` (FFmpeg 5.1, `libavformat/utils.c`) makes of a URL,
/// ported line by line: the model the tests and the fuzz target hold the parser against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibavSplit {
    /// Text before the first `:`.
    pub proto: String,
    /// User information: everything before the last `@` of the authority.
    pub authorization: String,
    /// Host name (IPv6 without brackets).
    pub hostname: String,
    /// Port (`atoi`), -1 when none.
    pub port: i32,
    /// Path, query included.
    pub path: String,
}

/// Runs the [`LibavSplit`] model with libavformat's buffer sizes: `hostname_size` is 1024 in
/// the RTSP demuxer and the TCP and SRT protocols, 256 in RTMP and 200 in TLS.
pub fn libav_split(url: &str, hostname_size: usize) -> LibavSplit {
    // C strings end at the first NUL.
    let url = url.as_bytes();
    let url = &url[..url.iter().position(|&b| b == 0).unwrap_or(url.len())];
    // av_strlcpy(dst, src, size) copies at most size - 1 bytes.
    let strlcpy = |src: &[u8], size: usize| -> String {
        let n = src.len().min(size.saturating_sub(1));
        String::from_utf8_lossy(&src[..n]).into_owned()
    };
    let (proto_size, auth_size, path_size) = (1024usize, 1024usize, 1024usize);
    let mut out = LibavSplit {
        proto: String::new(),
        authorization: String::new(),
        hostname: String::new(),
        port: -1,
        path: String::new(),
    };
    let Some(colon) = url.iter().position(|&b| b == b':') else {
        out.path = strlcpy(url, path_size);
        return out;
    };
    out.proto = strlcpy(&url[..colon], proto_size.min(colon + 1));
    let mut p = colon + 1;
    if url.get(p) == Some(&b'/') {
        p += 1;
    }
    if url.get(p) == Some(&b'/') {
        p += 1;
    }
    let ls = p + url[p..]
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(url.len() - p);
    out.path = strlcpy(&url[ls..], path_size);
    if ls != p {
        let at2 = p;
        while let Some(a) = url[p..].iter().position(|&b| b == b'@').map(|i| p + i) {
            if a >= ls {
                break;
            }
            out.authorization = strlcpy(&url[at2..a], auth_size.min(a + 1 - at2));
            p = a + 1;
        }
        let brk = url[p..].iter().position(|&b| b == b']').map(|i| p + i);
        let col = url[p..].iter().position(|&b| b == b':').map(|i| p + i);
        match (url.get(p), brk, col) {
            (Some(b'['), Some(brk), _) if brk < ls => {
                out.hostname = strlcpy(&url[p + 1..brk], hostname_size.min(brk - p));
                if url.get(brk + 1) == Some(&b':') {
                    out.port = atoi(&url[brk + 2..]);
                }
            }
            (_, _, Some(col)) if col < ls => {
                out.hostname = strlcpy(&url[p..col], hostname_size.min(col + 1 - p));
                out.port = atoi(&url[col + 1..]);
            }
            _ => out.hostname = strlcpy(&url[p..ls], hostname_size.min(ls + 1 - p)),
        }
    }
    out
}

/// glibc's `atoi`: `(int) strtol(s, NULL, 10)`: leading white space, a sign, digits;
/// saturating at the `long` range, then truncated to `int`.
fn atoi(s: &[u8]) -> i32 {
    let mut i = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
        .unwrap_or(s.len());
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut v: i64 = 0;
    let mut overflow = false;
    while let Some(d) = s.get(i).filter(|b| b.is_ascii_digit()) {
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
        {
            Some(n) => v = n,
            None => overflow = true,
        }
        i += 1;
    }
    let v = match (overflow, neg) {
        (true, false) => i64::MAX,
        (true, true) => i64::MIN,
        (false, true) => -v,
        (false, false) => v,
    };
    v as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> NetUrl {
        NetUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match NetUrl::parse(s) {
            Ok(u) => panic!("{s} was accepted as {}", u.to_libav(None, None)),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_bare_host_parses_by_the_url_rules() {
        assert_eq!(
            Host::parse("Models.Example").unwrap(),
            Host::Domain("models.example".into())
        );
        assert_eq!(
            Host::parse("10.0.0.5").unwrap(),
            Host::Ipv4([10, 0, 0, 5].into())
        );
        assert_eq!(
            Host::parse("[::1]").unwrap(),
            Host::Ipv6(Ipv6Addr::LOCALHOST)
        );
        assert_eq!(Host::parse("::1").unwrap(), Host::Ipv6(Ipv6Addr::LOCALHOST));
        for bad in [
            "127.1",
            "0x7f.0.0.1",
            "010.0.0.1",
            "a%2eb",
            "[::1",
            "[fe80::1%25eth0]",
            "",
            "a_b",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn parses_the_parts() {
        let u = ok("RTSP://Ad%20min:p%40ss:w@Cam.Example:8554/live/1?channel=2&sub=0");
        assert_eq!(u.scheme, NetScheme::Rtsp);
        assert_eq!(u.user.as_deref(), Some("Ad min"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("p@ss:w"));
        assert_eq!(u.host, Host::Domain("cam.example".into()));
        assert_eq!(u.port, Some(8554));
        assert_eq!(u.path, "/live/1");
        assert_eq!(u.query.as_deref(), Some("channel=2&sub=0"));
        assert_eq!(u.host_str(), "cam.example");
        assert_eq!(
            u.to_libav(None, None),
            "rtsp://Ad%20min:p%40ss%3Aw@cam.example:8554/live/1?channel=2&sub=0"
        );
        assert_eq!(u.redacted(), "rtsp://cam.example:8554/live/1?***");
        assert!(!format!("{u:?}").contains("ss"));
        let v6 = ok("rtsp://[0:0::1]:554");
        assert_eq!(v6.host_str(), "::1");
        assert_eq!(v6.to_libav(None, None), "rtsp://[::1]:554");
        assert_eq!(
            ok("srt://10.0.0.5:9000").host,
            Host::Ipv4([10, 0, 0, 5].into())
        );
    }

    #[test]
    fn rejects_the_ambiguous() {
        for (url, needle) in [
            ("rtsp://a@b@127.0.0.2/", "more than one '@'"),
            ("rtsp://cam.example/live?x?udp", "second '?'"),
            ("rtsps://cam.example/live?a=1?multicast", "second '?'"),
            ("rtsp://127.0.0.2#@evil/", "fragment"),
            ("rtsp://127.1/", "ambiguous numeric host"),
            ("rtsp://2130706433/", "ambiguous numeric host"),
            ("rtsp://0177.0.0.1/", "ambiguous numeric host"),
            ("rtsp://0x7f.1/", "ambiguous numeric host"),
            ("rtsp://127.0.0.01/", "ambiguous numeric host"),
            ("rtsp://127.0.0.1.5/", "ambiguous numeric host"),
            (
                "rtsp://%31%32%37.0.0.1/",
                "percent-encoding is not allowed in the host",
            ),
            ("rtsp://[::1%25eth0]/", "zone"),
            ("rtsp://[::1/", "without a closing"),
            ("rtsp://[::1]x/", "expected ':'"),
            ("rtsp://[v1.x]/", "not an IPv6"),
            ("rtsp://::1/", "host is missing"),
            ("rtsp://h:80x/", "invalid character 'x' in the port"),
            ("rtsp://h:0/", "between 1 and 65535"),
            ("rtsp://h:65536/", "between 1 and 65535"),
            ("rtsp://h:/", "empty"),
            ("rtsp://h\\@evil/", "backslash at byte 8"),
            ("rtsp://h /", "space"),
            ("rtsp://h\t/", "control"),
            ("rtsp://hé/", "non-ASCII"),
            ("rtsp://h/%zz", "two hexadecimal digits"),
            ("rtsp://h/%4", "two hexadecimal digits"),
            ("rtsp://h/a b", "space"),
            ("rtsp://h/a\"b", "invalid character '\"' in the path"),
            ("rtsp://h/?a<b", "invalid character '<' in the query"),
            ("rtsp:/h/", "expected \"//\""),
            ("rtsp:h", "expected \"//\""),
            ("rtsp:///x", "host is missing"),
            ("http://h/", "unsupported scheme"),
            ("rtsp://under_score/", "invalid character '_'"),
            ("rtsp://-h/", "start or end with '-'"),
            ("rtsp://a..b/", "empty label"),
            ("rtsp://a./", "empty label"),
            ("rtsp://u:p[x@h/", "'[' in the user information"),
            ("rtsp://@h/", "empty user information"),
            ("rtsp://:pw@h/", "empty user name"),
            ("rtsp://u%3Ax:pw@h/", "may not contain ':'"),
            ("rtsp://u:p%0Aw@h/", "control character"),
            ("rtsp://u:p%FFw@h/", "not valid UTF-8"),
            ("rtsp://h/?udp", "transport"),
            ("rtsp://h/x?a=1&TCP", "instead at byte 15"),
            ("rtsps://h/?http=1", "transport"),
            ("srt://h", "need a port"),
            ("srt://u@h:9000", "no user information"),
            ("rtmp://u:p%21@h/app", "rtmp credentials"),
            ("rtmp://u:p!@h/app", "rtmp credentials"),
            ("rtmp://u:p:q@h/app", "rtmp credentials"),
        ] {
            let e = err(url);
            assert!(
                e.contains(needle),
                "{url}: {e:?} does not mention {needle:?}"
            );
        }
        let long = format!("rtsp://{}.example/", "a".repeat(64));
        assert!(err(&long).contains("at most 63"));
        let labels = format!("rtsp://{}/", vec!["a".repeat(60); 5].join("."));
        assert!(err(&labels).contains("at most 253"));
        let tls = format!("rtsps://{}/", vec!["a".repeat(60); 4].join("."));
        assert!(err(&tls).contains("at most 199"));
        assert!(ok(&tls.replace("rtsps", "rtsp")).host_str().len() == 243);
        assert!(err(&format!("rtsp://h/{}", "a".repeat(MAX_URL_LEN))).contains("at most 1024"));
        let grows = format!("rtsp://u:{}@h/{}", "!".repeat(40), "p".repeat(960));
        assert!(grows.len() <= MAX_URL_LEN);
        assert!(err(&grows).contains("in canonical form"));
        let user = format!("rtsp://{}:x@h/", "%21".repeat(43));
        assert!(err(&user).contains("at most 127"));
        assert!(ok("rtsp://h/?udpx=1&tcpish").query.is_some());
        assert!(ok("rtmp://h/?udp").query.is_some());
        // Not ambiguous: the authority ends at '?', for libavformat as for this parser.
        assert_eq!(
            ok("rtsp://evil.example?@127.0.0.2/").host_str(),
            "evil.example"
        );
    }

    #[test]
    fn secrets_are_found_and_redacted() {
        let u = ok("srt://h:9000?mode=caller&PassPhrase=xyz&latency=20&to%6Ben=1");
        assert_eq!(u.secret_query_keys(), vec!["PassPhrase", "to%6Ben"]);
        assert_eq!(u.redacted(), "srt://h:9000?***");
        assert!(
            ok("srt://h:9000?mode=caller")
                .secret_query_keys()
                .is_empty()
        );
        let r = ok("rtmp://u:pw@h/live/STREAMKEY");
        assert!(r.has_userinfo());
        assert_eq!(r.redacted(), "rtmp://h/live/***");
        assert!(!ok("rtsp://h/x").has_userinfo());
    }

    #[test]
    fn configured_credentials_replace_the_urls() {
        let u = ok("rtsp://old:x@cam:554/live");
        let pw = Secret::new("p@ss:w/rd");
        assert_eq!(
            u.to_libav(Some("ad min"), Some(&pw)),
            "rtsp://ad%20min:p%40ss%3Aw%2Frd@cam:554/live"
        );
        assert_eq!(u.to_libav(Some("u"), None), "rtsp://u@cam:554/live");
        assert_eq!(u.to_libav(None, Some(&pw)), "rtsp://old:x@cam:554/live");
        assert_eq!(u.to_libav(Some(""), Some(&pw)), "rtsp://old:x@cam:554/live");
        assert_eq!(ok("rtsp://u:@h").to_libav(None, None), "rtsp://u:@h");
        assert_eq!(ok("rtsp://u@h").to_libav(None, None), "rtsp://u@h");
    }

    #[test]
    fn libav_model_matches_known_cases() {
        let s = libav_split("rtsp://a@b@evil:99?@127.0.0.2/x", 1024);
        assert_eq!(
            (s.authorization.as_str(), s.hostname.as_str(), s.port),
            ("a@b", "evil", 99)
        );
        assert_eq!(s.path, "?@127.0.0.2/x");
        let s = libav_split("rtsp://[::1]:554/x", 1024);
        assert_eq!((s.hostname.as_str(), s.port), ("::1", 554));
        let s = libav_split("rtsp://h:12junk/", 1024);
        assert_eq!((s.hostname.as_str(), s.port), ("h", 12));
        // strtol's long, cut to int: 2^32 + 554 is port 554 to libavformat.
        assert_eq!(libav_split("rtsp://h:4294967850/", 1024).port, 554);
        assert_eq!(libav_split("rtsp://h:99999999999999999999/", 1024).port, -1);
        assert!(err("rtsp://h:4294967850/").contains("between 1 and 65535"));
        let s = libav_split("rtsp://[::1/x]:5/", 1024);
        assert_eq!(s.hostname, "[");
        let long = format!("rtsp://{}/", "a".repeat(300));
        assert_eq!(libav_split(&long, 256).hostname.len(), 255);
    }

    /// Deterministic pseudo-random URLs built from the pieces that matter, for the round
    /// trip and the agreement with libavformat's split (the fuzz target does the same with
    /// arbitrary bytes).
    #[test]
    fn accepted_urls_round_trip_and_agree_with_libav() {
        let schemes = ["rtsp", "RTSPS", "rtmp", "rtmps", "srt"];
        let users = [
            "",
            "u@",
            "u:p@",
            "u:@",
            "a%40b:c%2Fd@",
            "x!$&'()*+,;=:y@",
            "us_er~:p.w-@",
        ];
        let hosts = [
            "h",
            "Cam.Example",
            "127.0.0.2",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
            "a-b.c-d",
            "xn--bcher-kva.example",
            "1.2.3.example",
        ];
        let ports = ["", ":1", ":554", ":65535", ":00080"];
        let tails = [
            "",
            "/",
            "/a/b",
            "/a@b:c",
            "?",
            "?x=1&y=%2F",
            "/p?q?r/s",
            "/%41%zz",
            "/!$&'()*+,;=",
        ];
        let mut accepted = 0;
        for s in schemes {
            for u in users {
                for h in hosts {
                    for p in ports {
                        for t in tails {
                            let text = format!("{s}://{u}{h}{p}{t}");
                            let Ok(url) = NetUrl::parse(&text) else {
                                continue;
                            };
                            accepted += 1;
                            let canon = url.to_libav(None, None);
                            assert!(canon.bytes().all(is_safe_url_byte), "{canon}");
                            assert_eq!(NetUrl::parse(&canon).as_ref(), Ok(&url), "{text}");
                            for size in [1024, 256, 200] {
                                let split = libav_split(&canon, size);
                                assert_eq!(split.hostname, url.host_str(), "{canon}");
                                assert_eq!(split.port, url.port.map_or(-1, i32::from), "{canon}");
                            }
                        }
                    }
                }
            }
        }
        assert!(accepted > 1000, "only {accepted} accepted");
    }
}
