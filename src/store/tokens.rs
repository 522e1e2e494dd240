//! The `api_tokens` table: admin API tokens by name and role, kept as SHA-256 hashes.

use super::audit::{self, Actor, Target};
use super::{corrupt, Row, Store, StoreError};
use serde::{Deserialize, Serialize};

/// An API token as listed: never the secret, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    /// Refused from this instant on; none: until revoked.
    pub expires_at_ms: Option<i64>,
}

impl TokenInfo {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    fn audit_view(&self) -> serde_json::Value {
        serde_json::json!({ "role": self.role, "expires_at_ms": self.expires_at_ms })
    }
}

pub(super) fn token_from_row(row: &Row) -> Result<TokenInfo, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(TokenInfo {
        name: row.try_get("name")?,
        role: match role.as_str() {
            "admin" => Role::Admin,
            "read" => Role::Read,
            other => return Err(corrupt(format!("token role {other:?}"))),
        },
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}

/// Roles of admin API tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

impl Store {
    pub async fn has_admin_token(&self) -> Result<bool, StoreError> {
        Ok(self.backend.sql("SELECT 1 FROM api_tokens WHERE role = 'admin' LIMIT 1").fetch_optional().await?.is_some())
    }

    /// Store a new token (by its hash) that expires at `expires_at_ms` (none: never).
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
        expires_at_ms: Option<i64>,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<TokenInfo, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let result = tx
            .sql(
                "INSERT INTO api_tokens (name, role, token_hash, created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(name)
            .bind(role.as_str())
            .bind(token_hash)
            .bind(now_ms)
            .bind(expires_at_ms)
            .execute()
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DuplicateToken(name.to_string()))
            }
            other => other.map_err(StoreError::from)?,
        };
        let info = TokenInfo { name: name.to_string(), role, created_at_ms: now_ms, expires_at_ms };
        let target = Target::named("token", name);
        audit::record(&mut tx, actor, "token.create", &target, None, Some(&info.audit_view()), now_ms).await?;
        tx.commit().await?;
        Ok(info)
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT name, role, created_at_ms, expires_at_ms FROM api_tokens ORDER BY name")
            .fetch_all()
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revoke a token. The last admin token that has no expiry cannot go: nobody
    /// could make another (an expiring one would soon leave none).
    pub async fn delete_token(&self, name: &str, actor: &Actor, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let row = tx
            .sql("SELECT name, role, created_at_ms, expires_at_ms FROM api_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional()
            .await?;
        let Some(row) = row else { return Err(StoreError::NoSuchToken(name.to_string())) };
        let token = token_from_row(&row)?;
        if token.role == Role::Admin && token.expires_at_ms.is_none() {
            let others: i64 = tx
                .sql(
                    "SELECT COUNT(*) AS n FROM api_tokens
                     WHERE role = 'admin' AND expires_at_ms IS NULL AND name <> $1",
                )
                .bind(name)
                .fetch_one()
                .await?
                .try_get("n")?;
            if others == 0 {
                return Err(StoreError::LastAdmin);
            }
        }
        tx.sql("DELETE FROM api_tokens WHERE name = $1").bind(name).execute().await?;
        // Its dashboard sessions end with it (they are found only through it anyway).
        tx.sql("DELETE FROM ui_sessions WHERE token_hash NOT IN (SELECT token_hash FROM api_tokens)").execute().await?;
        let target = Target::named("token", name);
        audit::record(&mut tx, actor, "token.delete", &target, Some(&token.audit_view()), None, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The token a hash belongs to, if any, expired or not: the caller decides.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenInfo>, StoreError> {
        let row = self
            .backend
            .sql("SELECT name, role, created_at_ms, expires_at_ms FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional()
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }
}
