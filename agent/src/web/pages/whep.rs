//! WHEP (draft-ietf-wish-whep) for the `webrtc` sink: `POST /whep/<stream>` with an SDP
//! offer (`application/sdp`, a logged-in viewer with the session's CSRF token) answers
//! `201 Created` with the SDP answer and the session's `Location`; `DELETE` there ends it.
//! The session's UDP socket is bound to the address the browser reached this server at:
//! the `Host`, which must be an IP address or `localhost` (a name is refused, as on the
//! token routes).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{PagesState, refuse_plain};
use crate::outputs::webrtc::{MAX_OFFER, WhepError};

/// The IP address the browser reached this server at, from its `Host`.
fn host_ip(headers: &HeaderMap) -> Result<std::net::IpAddr, String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = crate::web::host_part(host);
    if name.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    name.parse().map_err(|_| {
        format!("Host {host:?}: WebRTC needs the device's IP address (or localhost) in the URL")
    })
}

/// The SDP offer in a WHEP or WHIP request: `application/sdp`, at most [`MAX_OFFER`]
/// bytes, UTF-8; and the address to bind the session's socket on. Else the refusal's code
/// and reason.
pub(super) fn sdp_offer<'a>(
    headers: &HeaderMap,
    body: &'a Bytes,
) -> Result<(&'a str, std::net::IpAddr), (StatusCode, String)> {
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/sdp")
        });
    if !sdp_type {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as application/sdp".into(),
        ));
    }
    if body.len() > MAX_OFFER {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the offer is over {MAX_OFFER} bytes"),
        ));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err((StatusCode::BAD_REQUEST, "the offer is not UTF-8".into()));
    };
    let ip = host_ip(headers).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
    Ok((text, ip))
}

/// `201 Created` with the SDP `answer` and the session's `location`.
pub(super) fn answered(location: String, answer: String) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        answer,
    )
        .into_response()
}

/// POST `/whep/{stream}`.
pub async fn offer(
    State(s): State<Arc<PagesState>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (text, ip) = match sdp_offer(&headers, &body) {
        Ok(o) => o,
        Err((code, why)) => return refuse_plain(code, why),
    };
    match s
        .served
        .whep
        .offer(&stream, text, ip, s.served.udp.as_ref())
        .await
    {
        Ok((id, answer)) => answered(format!("/whep/{stream}/{id}"), answer),
        Err(e) => {
            let code = match e {
                WhepError::NotServed(_) => StatusCode::NOT_FOUND,
                WhepError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
                WhepError::BadOffer(_) => StatusCode::BAD_REQUEST,
                WhepError::NoCodec(_) => StatusCode::NOT_ACCEPTABLE,
                WhepError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            refuse_plain(code, e.to_string())
        }
    }
}

/// DELETE `/whep/{stream}/{session}`.
pub async fn end(
    State(s): State<Arc<PagesState>>,
    Path((stream, id)): Path<(String, String)>,
) -> Response {
    if s.served.whep.end(&stream, &id) {
        StatusCode::OK.into_response()
    } else {
        refuse_plain(
            StatusCode::NOT_FOUND,
            format!("no WebRTC session {id:?} of {stream:?}"),
        )
    }
}
