//! The `events` table: every node's timeline. All rows go in through [`insert`], the
//! one place that knows the columns, with a typed [`EventKind`].

use super::{Backend, BootId, NodeId, Store, StoreError};
use crate::node::NodeState;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    pub node_id: NodeId,
    pub boot_id: Option<BootId>,
    pub at_ms: i64,
    // A plain string in the OpenAPI document, as before the enum.
    #[schema(value_type = String)]
    pub kind: EventKind,
    pub state: Option<NodeState>,
    pub phase_ms: Option<i64>,
    pub message: String,
}

/// What an event is about. Stored and serialised as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A lifecycle move (the event's `state` is where the node went).
    State,
    Progress,
    Dhcp,
    Info,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [EventKind::State, EventKind::Progress, EventKind::Dhcp, EventKind::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Progress => "progress",
            EventKind::Dhcp => "dhcp",
            EventKind::Info => "info",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so `{:<8}` in the CLI's tables lines up as it did with a String.
        f.pad(self.as_str())
    }
}

/// Readers that treated `kind` as a string (`unwrap_or(&e.kind)`) keep compiling.
impl std::ops::Deref for EventKind {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown event kind {0:?}")]
pub struct EventKindParseError(pub String);

impl FromStr for EventKind {
    type Err = EventKindParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| EventKindParseError(s.to_string()))
    }
}

/// One row to insert: a note (`kind` other than `State`) or a state move.
pub(super) struct NewEvent<'a> {
    pub node: NodeId,
    pub boot: Option<BootId>,
    pub kind: EventKind,
    pub state: Option<NodeState>,
    /// For a state move: how long the node spent in the state it left.
    pub phase_ms: Option<i64>,
    pub message: &'a str,
}

impl<'a> NewEvent<'a> {
    /// An event that does not move the node.
    pub fn note(node: NodeId, boot: Option<BootId>, kind: EventKind, message: &'a str) -> Self {
        NewEvent { node, boot, kind, state: None, phase_ms: None, message }
    }

    /// A move of the node to `state`.
    pub fn moved(
        node: NodeId,
        boot: Option<BootId>,
        state: NodeState,
        phase_ms: Option<i64>,
        message: &'a str,
    ) -> Self {
        NewEvent { node, boot, kind: EventKind::State, state: Some(state), phase_ms, message }
    }
}

/// Insert `event` at `at_ms`, in a transaction or straight on the pool.
pub(super) async fn insert<'c>(
    db: impl sqlx::SqliteExecutor<'c>,
    event: &NewEvent<'_>,
    at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (node_id, boot_id, at_ms, kind, state, phase_ms, message) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event.node)
    .bind(event.boot)
    .bind(at_ms)
    .bind(event.kind)
    .bind(event.state)
    .bind(event.phase_ms)
    .bind(event.message)
    .execute(db)
    .await?;
    Ok(())
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Event, StoreError> {
    Ok(Event {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        boot_id: row.try_get("boot_id")?,
        at_ms: row.try_get("at_ms")?,
        kind: row.try_get("kind")?,
        state: row.try_get("state")?,
        phase_ms: row.try_get("phase_ms")?,
        message: row.try_get("message")?,
    })
}

impl Store {
    /// Record an event that does not move the node (progress, DHCP, info).
    pub async fn add_event(
        &self,
        node: NodeId,
        boot: Option<BootId>,
        kind: EventKind,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        insert(pool, &NewEvent::note(node, boot, kind, message), now_ms).await
    }

    /// A node's events, oldest first, newer than `after_id`, at most `limit`.
    pub async fn events(&self, node: NodeId, after_id: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let rows = sqlx::query("SELECT * FROM events WHERE node_id = ? AND id > ? ORDER BY id LIMIT ?")
            .bind(node)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Events of every node, oldest first, newer than `after_id`.
    pub async fn all_events(&self, after_id: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let rows = sqlx::query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The newest `last` events (of one node, or of all), oldest first.
    pub async fn recent_events(&self, node: Option<NodeId>, last: i64) -> Result<Vec<Event>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM events WHERE (? IS NULL OR node_id = ?) ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(node)
        .bind(node)
        .bind(last)
        .fetch_all(pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM events").fetch_one(pool).await?;
        Ok(row.try_get("id")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert!("bogus".parse::<EventKind>().is_err());
        assert_eq!(format!("{:<8}|", EventKind::Dhcp), "dhcp    |");
    }
}
