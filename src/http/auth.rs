//! Who may call what. Admin API calls carry a bearer token from `api_tokens` (stored
//! hashed) with a role: `read` for GETs, `admin` for changes. Per-boot tokens live in
//! `boots` and are never found here, so a node can never act as an operator.

use super::error::ApiError;
use super::AppState;
use crate::store::{Actor, Role, Store, StoreError};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The token of an `Authorization: Bearer` header, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A caller holding a valid admin-API token of any role: reads take this.
pub struct Operator {
    pub role: Role,
    /// The token, by name: who the audit trail says made a change.
    pub actor: Actor,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| ApiError::unauthorized("an API bearer token is required"))?;
        let Some(info) = state.store.token_by_hash(&crate::token::hash(token)).await? else {
            return Err(ApiError::unauthorized("unknown API token"));
        };
        if let Some(at) = info.expires_at_ms.filter(|&at| crate::clock::now_ms() >= at) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_expired",
                format!(
                    "API token {:?} expired at {}; ask an admin for a new one (`ramboot tokens create`)",
                    info.name,
                    crate::cli::format_ms(at)
                ),
            ));
        }
        Ok(Operator { role: info.role, actor: Actor::Token { name: info.name } })
    }
}

/// A caller holding an admin-role token: every change takes this, so a handler
/// cannot forget the check. It runs before the body is read, so a read token gets
/// 403 whatever it sent. It carries the actor every change is audited under.
pub struct Admin(pub Actor);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let operator = Operator::from_request_parts(parts, state).await?;
        match operator.role {
            Role::Admin => Ok(Admin(operator.actor)),
            Role::Read => Err(ApiError::forbidden("this needs a token with the admin role")),
        }
    }
}

/// Where the first admin token is written.
pub fn admin_token_path(data: &Path) -> PathBuf {
    data.join("admin.token")
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the admin token to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a token: {0}")]
    Random(#[from] crate::token::TokenError),
}

/// On a server's first start, create an admin token and write it (mode 0600, created
/// exclusively) where only root can read it. Returns the path when it did.
pub async fn bootstrap_admin_token(
    store: &Store,
    data: &Path,
    server: &Actor,
    now_ms: i64,
) -> Result<Option<PathBuf>, BootstrapError> {
    if store.has_admin_token().await? {
        return Ok(None);
    }
    let token = crate::token::generate()?;
    let path = admin_token_path(data);
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // A stale file from an older database is replaced, never appended to.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()
    };
    write().map_err(|source| BootstrapError::Write { path: path.clone(), source })?;
    store.create_token("admin", Role::Admin, &crate::token::hash(&token), None, server, now_ms).await?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn server() -> Actor {
        Actor::Server { name: "test".into() }
    }

    #[tokio::test]
    async fn first_start_writes_one_admin_token_readable_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let path =
            bootstrap_admin_token(&store, dir.path(), &server(), 0).await.unwrap().expect("created on first start");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        let info = store.token_by_hash(&crate::token::hash(token.trim())).await.unwrap().unwrap();
        assert_eq!((info.role, info.expires_at_ms), (Role::Admin, None));
        assert!(bootstrap_admin_token(&store, dir.path(), &server(), 1).await.unwrap().is_none(), "only once");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token, "and the file is left alone");
    }
}
