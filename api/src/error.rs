//! The one error body every API error has: `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The one error shape, as documented in the OpenAPI document.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `unauthorized`, `forbidden`, `bad_request`,
    /// `bad_body`, `invalid`, `conflict`, `in_use`, `internal`, ...
    pub code: String,
    pub message: String,
    /// Extra structured context, when there is any.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}
