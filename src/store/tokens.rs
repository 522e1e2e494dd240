//! The `api_tokens` table: admin API tokens by name and role, kept as SHA-256 hashes.

use super::{corrupt, Backend, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::Row;

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
        let Backend::Sqlite(pool) = &self.backend;
        Ok(sqlx::query("SELECT 1 FROM api_tokens WHERE role = 'admin' LIMIT 1").fetch_optional(pool).await?.is_some())
    }

    pub async fn create_token(&self, name: &str, role: Role, token_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let result = sqlx::query("INSERT INTO api_tokens (name, role, token_hash, created_at_ms) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(role.as_str())
            .bind(token_hash)
            .bind(now_ms)
            .execute(pool)
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::DuplicateToken(name.to_string()))
            }
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let rows =
            sqlx::query("SELECT name, role, created_at_ms FROM api_tokens ORDER BY name").fetch_all(pool).await?;
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
        let Backend::Sqlite(pool) = &self.backend;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT role FROM api_tokens WHERE name = ?").bind(name).fetch_optional(&mut *tx).await?;
        let Some(row) = row else { return Err(StoreError::NoSuchToken(name.to_string())) };
        let role: String = row.try_get("role")?;
        if role == "admin" {
            let admins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE role = 'admin'")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if admins <= 1 {
                return Err(StoreError::LastAdmin);
            }
        }
        sqlx::query("DELETE FROM api_tokens WHERE name = ?").bind(name).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The role a token hash grants, if any.
    pub async fn token_role(&self, token_hash: &str) -> Result<Option<Role>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let row = sqlx::query("SELECT role FROM api_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(pool)
            .await?;
        Ok(match row {
            None => None,
            Some(row) => match row.try_get::<String, _>("role")?.as_str() {
                "admin" => Some(Role::Admin),
                "read" => Some(Role::Read),
                other => return Err(corrupt(format!("token role {other:?}"))),
            },
        })
    }
}
