//! Admin API tokens: listing, creating (the secret is shown once) and their roles.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An API token as listed: never the secret, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    /// Refused from this instant on (ms since the Unix epoch); absent: until revoked.
    pub expires_at_ms: Option<i64>,
}

/// Roles of admin API tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Admin,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Unique, for people: who or what holds it (`prometheus`, `alice`).
    #[schema(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")]
    pub name: String,
    pub role: Role,
    /// The token is refused this many seconds after it is made (time-boxed access);
    /// absent: it lasts until revoked.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 316224000)]
    pub expires_in_seconds: Option<u64>,
}

/// The new token, shown this once: only its hash is stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
    pub expires_at_ms: Option<i64>,
}
