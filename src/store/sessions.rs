//! The `ui_sessions` table: dashboard logins. A session is held by a browser as a
//! random id (stored here only as its hash) and acts as the API token it was opened
//! with: it is looked up together with that token, so revoking the token ends it.

use super::tokens::{token_from_row, TokenInfo};
use super::{Store, StoreError};

impl Store {
    /// Open a session (by the hash of its id) for the token with `token_hash`,
    /// until `expires_at_ms`. Expired sessions are cleared on the way: logins are
    /// rare, so this keeps the table small without a sweeper.
    pub async fn create_session(
        &self,
        id_hash: &str,
        token_hash: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        tx.sql("DELETE FROM ui_sessions WHERE expires_at_ms <= $1").bind(now_ms).execute().await?;
        tx.sql("INSERT INTO ui_sessions (id_hash, token_hash, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)")
            .bind(id_hash)
            .bind(token_hash)
            .bind(now_ms)
            .bind(expires_at_ms)
            .execute()
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The token behind a live session, and when the session expires; `None` when
    /// the session is unknown, expired, or its token was revoked. The token's own
    /// expiry is the caller's to check.
    pub async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<(TokenInfo, i64)>, StoreError> {
        let row = self
            .backend
            .sql(
                "SELECT t.name, t.role, t.created_at_ms, t.expires_at_ms, s.expires_at_ms AS session_expires_at_ms
                 FROM ui_sessions s JOIN api_tokens t ON t.token_hash = s.token_hash
                 WHERE s.id_hash = $1 AND s.expires_at_ms > $2",
            )
            .bind(id_hash)
            .bind(now_ms)
            .fetch_optional()
            .await?;
        match row {
            Some(row) => Ok(Some((token_from_row(&row)?, row.try_get("session_expires_at_ms")?))),
            None => Ok(None),
        }
    }

    /// Log a session out.
    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        // In its turn at SQLite's write lock, as every write of this process.
        let mut tx = self.backend.begin_write_alone().await?;
        tx.sql("DELETE FROM ui_sessions WHERE id_hash = $1").bind(id_hash).execute().await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::{op, store};
    use crate::store::Role;

    #[tokio::test]
    async fn a_session_lives_until_it_expires_or_its_token_is_revoked() {
        let (s, _d) = store().await;
        s.create_token("alice", Role::Read, "tok-a", None, &op(), 1).await.unwrap();
        s.create_token("bob", Role::Admin, "tok-b", None, &op(), 1).await.unwrap();
        s.create_session("sess-a", "tok-a", 1_000, 10).await.unwrap();
        s.create_session("sess-b", "tok-b", 1_000, 10).await.unwrap();
        let (token, expires) = s.session("sess-a", 500).await.unwrap().expect("live");
        assert_eq!((token.name.as_str(), token.role, expires), ("alice", Role::Read, 1_000));
        assert!(s.session("sess-a", 1_000).await.unwrap().is_none(), "expired at its instant");
        assert!(s.session("nope", 500).await.unwrap().is_none());
        s.delete_token("alice", &op(), 20).await.unwrap();
        assert!(s.session("sess-a", 500).await.unwrap().is_none(), "revoking the token ends it");
        s.delete_session("sess-b").await.unwrap();
        assert!(s.session("sess-b", 500).await.unwrap().is_none(), "logged out");
        // A login clears expired sessions.
        s.create_session("sess-c", "tok-b", 3_000, 2_000).await.unwrap();
        assert!(s.session("sess-c", 2_500).await.unwrap().is_some());
    }
}
