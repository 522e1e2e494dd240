//! One error shape for every HTTP error: `{"error": {"code", "message"}}`.

use crate::images::ImageError;
use crate::store::StoreError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The one error shape, as documented in the OpenAPI document.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `unauthorized`, `forbidden`, `bad_request`,
    /// `bad_body`, `invalid`, `conflict`, `in_use`, `internal`, ...
    pub code: String,
    pub message: String,
    /// Extra structured context, when there is any.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message, details: None } };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchNode(_) | StoreError::NoSuchToken(_) | StoreError::NoSuchVolume(_) => {
                ApiError::not_found(e.to_string())
            }
            StoreError::BadTransition { .. }
            | StoreError::StaleBoot(_)
            | StoreError::DuplicateMac(_)
            | StoreError::DuplicateToken(_)
            | StoreError::LastAdmin
            | StoreError::DuplicateVolume(_)
            | StoreError::VolumeAttached { .. }
            | StoreError::ReservedElsewhere { .. }
            | StoreError::LeasedElsewhere { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NoSuchImage(_) | ImageError::MissingArtifact { .. } => ApiError::not_found(e.to_string()),
            ImageError::BadName(_) => ApiError::bad_request(e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
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
