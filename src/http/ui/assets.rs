//! The dashboard's stylesheet and script, embedded in the binary and served under
//! a path holding a prefix of their SHA-256: the HTML names that path, so a browser
//! may cache them for ever and still gets a new build's at once.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

pub struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    path: LazyLock<String>,
}

impl Asset {
    /// `/ui/assets/<hash>/<name>`.
    pub fn path(&'static self) -> &'static str {
        &self.path
    }

    fn hash(&'static self) -> &'static str {
        let path: &'static str = &self.path;
        path.trim_start_matches("/ui/assets/").split('/').next().unwrap_or_default()
    }
}

fn versioned(name: &str, body: &str) -> String {
    format!("/ui/assets/{}/{name}", &hex::encode(Sha256::digest(body.as_bytes()))[..16])
}

pub static CSS: Asset = Asset {
    name: "ui.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("ui.css"),
    path: LazyLock::new(|| versioned("ui.css", include_str!("ui.css"))),
};

pub static JS: Asset = Asset {
    name: "ui.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("ui.js"),
    path: LazyLock::new(|| versioned("ui.js", include_str!("ui.js"))),
};

/// An asset by its versioned path; an old build's hash is not found, so a stale
/// page reloads rather than mixing builds.
pub async fn serve(Path((hash, name)): Path<(String, String)>) -> Response {
    match [&CSS, &JS].into_iter().find(|a| a.name == name && a.hash() == hash) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            asset.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset in this build").into_response(),
    }
}
