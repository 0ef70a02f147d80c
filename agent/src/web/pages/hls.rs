//! `/hls/<stream>/<file>`: the `hls` sink's playlist and media, for a logged-in viewer
//! (the session cookie; players such as hls.js and ffmpeg send it with every request) or a
//! machine client of `outputs.hls.clients` with its token (a CDN's origin pull, a VMS).
//!
//! What a client gets may be kept by a shared cache (a CDN in front of the device):
//! media files and blocking playlist reloads for one target duration (`public`: the token
//! admitted the CDN, which then serves its own viewers), the live playlist never. A
//! viewer's answers are `no-store`, as every session page's.
//!
//! `index.m3u8?_HLS_msn=N[&_HLS_part=M]` is a blocking playlist reload and a request for the
//! playlist's preload hint waits for that part (LL-HLS); both wait at most three target
//! durations, then answer 503 (playlist) or 404 (part).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{PagesState, refuse_plain};
use crate::outputs::hls::{HlsError, HlsFile};
use crate::web::HlsClientName;

/// The playlist's media type (RFC 8216).
const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

/// `_HLS_skip`: whether a delta update is asked for (`YES`, or `v2`: there are no date
/// ranges to skip, so both get the same); an error names a bad value.
fn skip(q: &HashMap<String, String>) -> Result<bool, String> {
    match q.get("_HLS_skip").map(String::as_str) {
        None => Ok(false),
        Some("YES" | "v2") => Ok(true),
        Some(v) => Err(format!("_HLS_skip={v:?}: expected YES or v2")),
    }
}

/// The blocking-reload parameters: `(msn, part)`; an error names the bad one.
fn blocking(q: &HashMap<String, String>) -> Result<Option<(u64, Option<usize>)>, String> {
    let num = |k: &str| -> Result<Option<u64>, String> {
        q.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}={v:?} is not a number"))
            })
            .transpose()
    };
    let msn = num("_HLS_msn")?;
    let part = num("_HLS_part")?
        .map(|p| usize::try_from(p).map_err(|_| format!("_HLS_part={p} is too large")))
        .transpose()?;
    match (msn, part) {
        (None, Some(_)) => Err("_HLS_part needs _HLS_msn".into()),
        (None, None) => Ok(None),
        (Some(m), p) => Ok(Some((m, p))),
    }
}

/// GET `/hls/{stream}/{file}`.
pub async fn file(
    State(s): State<Arc<PagesState>>,
    Path((stream, name)): Path<(String, String)>,
    client: Option<Extension<HlsClientName>>,
    uri: Uri,
) -> Response {
    let Some(hls) = s.served.hls.stream(&stream) else {
        return refuse_plain(
            StatusCode::NOT_FOUND,
            format!(
                "stream {stream:?} is not served as HLS (no hls sink lists it, or it is not running)"
            ),
        );
    };
    let Some(file) = HlsFile::parse(&name) else {
        return refuse_plain(
            StatusCode::NOT_FOUND,
            format!("no file {name:?} in an HLS stream"),
        );
    };
    // What a shared cache may keep (a machine client's answers only): media and blocking
    // reloads a target duration, the live playlist nothing.
    let mut cache = format!("public, max-age={}", hls.target_seconds());
    let answer = match file {
        HlsFile::Playlist => {
            let q = super::query(&uri);
            let (block, skip) = match blocking(&q).and_then(|b| Ok((b, skip(&q)?))) {
                Ok(b) => b,
                Err(why) => return refuse_plain(StatusCode::BAD_REQUEST, why),
            };
            if block.is_none() {
                cache = "no-cache".into();
            }
            hls.playlist(block, skip)
                .await
                .map(|text| ([(header::CONTENT_TYPE, PLAYLIST_TYPE)], text).into_response())
        }
        HlsFile::Multivariant => {
            cache = "no-cache".into();
            hls.multivariant()
                .await
                .map(|text| ([(header::CONTENT_TYPE, PLAYLIST_TYPE)], text).into_response())
        }
        media => hls.media(media).await.map(|m| {
            let len = m.len();
            let body = Body::from_stream(futures_util::stream::iter(
                m.chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
            ));
            (
                [
                    (header::CONTENT_TYPE, "video/mp4".to_owned()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                body,
            )
                .into_response()
        }),
    };
    match answer {
        Ok(mut r) => {
            if client.is_some()
                && let Ok(v) = header::HeaderValue::from_str(&cache)
            {
                r.headers_mut().insert(header::CACHE_CONTROL, v);
            }
            r
        }
        Err(e) => {
            let code = match e {
                HlsError::BadRequest(_) => StatusCode::BAD_REQUEST,
                HlsError::NotFound(_) => StatusCode::NOT_FOUND,
                HlsError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            refuse_plain(code, e.to_string())
        }
    }
}
