//! `/hls/<stream>/<file>`: the `hls` sink's playlist and media, for a logged-in viewer
//! (the session cookie; players such as hls.js and ffmpeg send it with every request).
//!
//! `index.m3u8?_HLS_msn=N[&_HLS_part=M]` is a blocking playlist reload and a request for the
//! playlist's preload hint waits for that part (LL-HLS); both wait at most three target
//! durations, then answer 503 (playlist) or 404 (part).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{PagesState, refuse_plain};
use crate::outputs::hls::{HlsError, HlsFile};

/// The playlist's media type (RFC 8216).
const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

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
    let answer = match file {
        HlsFile::Playlist => {
            let block = match blocking(&super::query(&uri)) {
                Ok(b) => b,
                Err(why) => return refuse_plain(StatusCode::BAD_REQUEST, why),
            };
            hls.playlist(block)
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
    answer.unwrap_or_else(|e| {
        let code = match e {
            HlsError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HlsError::NotFound(_) => StatusCode::NOT_FOUND,
            HlsError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        refuse_plain(code, e.to_string())
    })
}
