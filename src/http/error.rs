//! One error shape for every HTTP error: `{"error": {"code", "message"}}`
//! (`ramboot_api::ErrorBody`), and the mapping of the server's errors onto it.
//!
//! Operator mistakes (unknown names, conflicts, invalid values) say what was wrong.
//! Server faults never show their detail, which can hold SQL or file paths: a 500
//! says "internal error" with a short incident id, and the detail goes to the log
//! under that id.

use crate::images::ImageError;
use crate::iscsi::service::VolumeError;
use crate::store::StoreError;
use crate::token::TokenError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ramboot_api::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// A request that parsed but asks for something invalid.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// A server fault: `detail` is logged now, under an id the caller is shown instead.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let incident = incident_id();
        tracing::error!(%incident, error = %detail, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, format!("internal error (incident {incident})"))
    }
}

const INTERNAL: &str = "internal";

/// Eight hex digits: enough to find one line in a day's log.
fn incident_id() -> String {
    format!("{:08x}", getrandom::u32().unwrap_or(0))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // `internal` logged its detail when it was made; other 5xx (503) log here.
        if self.status.is_server_error() && self.code != INTERNAL {
            tracing::error!(code = self.code, detail = %self.message, "request failed");
        }
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message, details: None } };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchNode(_)
            | StoreError::NoSuchToken(_)
            | StoreError::NoSuchVolume(_)
            | StoreError::NoSuchRollout(_) => ApiError::not_found(e.to_string()),
            StoreError::BadTransition { .. }
            | StoreError::StaleBoot(_)
            | StoreError::DuplicateMac(_)
            | StoreError::DuplicateToken(_)
            | StoreError::LastAdmin
            | StoreError::DuplicateVolume(_)
            | StoreError::VolumeAttached { .. }
            | StoreError::ReservedElsewhere { .. }
            | StoreError::LeasedElsewhere { .. }
            | StoreError::RolloutRefused(_)
            | StoreError::NodeInRollout { .. } => ApiError::conflict(e.to_string()),
            StoreError::DeclaredInFile { .. } | StoreError::DeclaredNode { .. } => {
                ApiError::new(StatusCode::CONFLICT, "declared_in_file", e.to_string())
            }
            // Disk full, read-only, busy: the operator's to fix, and retrying later works.
            StoreError::Unwritable { reason, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the database cannot take writes right now ({reason}); try again later"),
            ),
            _ => ApiError::internal(e),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NoSuchImage(_) | ImageError::MissingArtifact { .. } => ApiError::not_found(e.to_string()),
            ImageError::BadName(_) => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(e),
        }
    }
}

/// The admin API's mapping; the boot tier maps volume errors its own way (always 503).
impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Store(e) => e.into(),
            VolumeError::Invalid(m) => ApiError::unprocessable(m),
            // The iSCSI target (tgt) failed or is unreachable: an outage of that
            // service, and its message is what the operator needs to fix it.
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "iscsi", other.to_string()),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::internal(e)
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(e)
    }
}

/// `Json<T>` whose rejections (bad syntax, wrong types, unknown fields, oversize
/// bodies) come back in the one error shape, with axum's status code.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::new(rejection.status(), "bad_body", rejection.body_text())),
        }
    }
}

/// Unknown routes: a 404 in the same shape as every other error.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, ErrorBody) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_server_fault_shows_an_incident_id_and_no_detail() {
        let e = ApiError::from(StoreError::Corrupt("row 12 of nodes: SELECT * FROM nodes".into()));
        let (status, body) = answer(e).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body.error.code, "internal");
        assert!(body.error.message.starts_with("internal error (incident "), "{}", body.error.message);
        assert!(!body.error.message.contains("nodes"), "no database text: {}", body.error.message);
    }

    #[tokio::test]
    async fn operator_mistakes_keep_their_status_and_message() {
        let (status, body) = answer(StoreError::NoSuchToken("ci".into()).into()).await;
        assert_eq!((status, body.error.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
        assert_eq!(body.error.message, "no token named \"ci\"");
        let (status, body) = answer(StoreError::LastAdmin.into()).await;
        assert_eq!((status, body.error.code.as_str()), (StatusCode::CONFLICT, "conflict"));
        let (status, body) = answer(VolumeError::Invalid("size must be a whole number of MiB".into()).into()).await;
        assert_eq!((status, body.error.code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid"));
        assert_eq!(body.error.message, "size must be a whole number of MiB");
    }
}
