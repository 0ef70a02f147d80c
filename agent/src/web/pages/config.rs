//! Config (`GET /config`): the effective configuration, passwords redacted.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;

use super::{PagesState, esc, layout};
use crate::web::Viewer;

/// `GET /config`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let pretty = serde_json::to_string_pretty(&s.config).unwrap_or_default();
    layout(
        &viewer,
        "Config",
        None,
        &format!(
            "<p>The configuration in force (passwords shown as ***).</p><pre>{}</pre>",
            esc(&pretty)
        ),
    )
}
