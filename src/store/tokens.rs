//! The `api_tokens` table: admin API tokens by name and role, kept as SHA-256 hashes.

use super::{corrupt, Store, StoreError};
use serde::{Deserialize, Serialize};

/// An API token as listed: never the secret, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
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

    pub async fn create_token(&self, name: &str, role: Role, token_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let result = self
            .backend
            .sql("INSERT INTO api_tokens (name, role, token_hash, created_at_ms) VALUES ($1, $2, $3, $4)")
            .bind(name)
            .bind(role.as_str())
            .bind(token_hash)
            .bind(now_ms)
            .execute()
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::DuplicateToken(name.to_string()))
            }
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows =
            self.backend.sql("SELECT name, role, created_at_ms FROM api_tokens ORDER BY name").fetch_all().await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(TokenInfo {
                    name: row.try_get("name")?,
                    role: if role == "admin" { Role::Admin } else { Role::Read },
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    /// Revoke a token. The last admin token cannot go: nobody could make another.
    pub async fn delete_token(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let row = tx.sql("SELECT role FROM api_tokens WHERE name = $1").bind(name).fetch_optional().await?;
        let Some(row) = row else { return Err(StoreError::NoSuchToken(name.to_string())) };
        let role: String = row.try_get("role")?;
        if role == "admin" {
            let admins: i64 =
                tx.sql("SELECT COUNT(*) AS n FROM api_tokens WHERE role = 'admin'").fetch_one().await?.try_get("n")?;
            if admins <= 1 {
                return Err(StoreError::LastAdmin);
            }
        }
        tx.sql("DELETE FROM api_tokens WHERE name = $1").bind(name).execute().await?;
        tx.commit().await?;
        Ok(())
    }

    /// The role a token hash grants, if any.
    pub async fn token_role(&self, token_hash: &str) -> Result<Option<Role>, StoreError> {
        let row = self
            .backend
            .sql("SELECT role FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional()
            .await?;
        Ok(match row {
            None => None,
            Some(row) => match row.try_get::<String>("role")?.as_str() {
                "admin" => Some(Role::Admin),
                "read" => Some(Role::Read),
                other => return Err(corrupt(format!("token role {other:?}"))),
            },
        })
    }
}
