//! The `events` table: every node's timeline. All rows go in through [`insert`], the
//! one place that knows the columns, with a typed [`EventKind`].

use super::{BootId, NodeId, Row, Sql, Store, StoreError, Text};
use ramboot_core::node::NodeState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub node_id: NodeId,
    pub boot_id: Option<BootId>,
    pub at_ms: i64,
    pub kind: EventKind,
    pub state: Option<NodeState>,
    pub phase_ms: Option<i64>,
    pub message: String,
}

/// Read straight from its row: every column decodes to its field's type.
fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    Ok(Event {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        boot_id: row.try_get("boot_id")?,
        at_ms: row.try_get("at_ms")?,
        kind: row.try_get::<Text<_>>("kind")?.0,
        state: row.try_get::<Option<Text<_>>>("state")?.map(|Text(s)| s),
        phase_ms: row.try_get("phase_ms")?,
        message: row.try_get("message")?,
    })
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

/// Insert `event` at `at_ms` in `db`'s transaction (watchers wake when it commits).
pub(super) async fn insert(db: &mut impl Sql, event: &NewEvent<'_>, at_ms: i64) -> Result<(), StoreError> {
    db.sql(
        "INSERT INTO events (node_id, boot_id, at_ms, kind, state, phase_ms, message) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.node)
    .bind(event.boot)
    .bind(at_ms)
    .bind(Text(event.kind))
    .bind(event.state.map(Text))
    .bind(event.phase_ms)
    .bind(event.message)
    .execute()
    .await?;
    db.wrote_events();
    Ok(())
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
        // One of a storm's many small writes: committed with whatever else is due.
        let mut write = self.backend.begin_write().await?;
        insert(&mut write, &NewEvent::note(node, boot, kind, message), now_ms).await?;
        write.commit().await
    }

    /// A node's events, oldest first, newer than `after_id`, at most `limit`.
    pub async fn events(&self, node: NodeId, after_id: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT * FROM events WHERE node_id = $1 AND id > $2 ORDER BY id LIMIT $3")
            .bind(node)
            .bind(after_id)
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Events of every node, oldest first, newer than `after_id`.
    pub async fn all_events(&self, after_id: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after_id)
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The newest `last` events (of one node, or of all), oldest first.
    pub async fn recent_events(&self, node: Option<NodeId>, last: i64) -> Result<Vec<Event>, StoreError> {
        let rows = self.backend.sql(
            "SELECT * FROM (SELECT * FROM events WHERE ($1 IS NULL OR node_id = $2) ORDER BY id DESC LIMIT $3) AS recent ORDER BY id",
        )
        .bind(node)
        .bind(node)
        .bind(last)
        .fetch_all()
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Delete at most `limit` events older than `before_ms`, oldest first, except
    /// those of a node's current boot (its running timeline stays whole). Returns
    /// how many went; the caller repeats until fewer than `limit` go, so no single
    /// transaction holds the write lock for long.
    pub async fn prune_events(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        // Ids rise with time, so walking `events_id` from the oldest stops after the
        // first `limit` matches instead of scanning the table.
        // A transaction of its own (not the group's: a bulk delete runs on sqlx's
        // thread), so it takes its turn at SQLite's write lock.
        let mut tx = self.backend.begin_write_alone().await?;
        let done = tx
            .sql(
                "DELETE FROM events WHERE id IN (
                 SELECT id FROM events
                 WHERE at_ms < $1
                   AND (boot_id IS NULL
                        OR boot_id NOT IN (SELECT current_boot_id FROM nodes WHERE current_boot_id IS NOT NULL))
                 ORDER BY id LIMIT $2)",
            )
            .bind(before_ms)
            .bind(limit)
            .execute()
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        let row = self.backend.sql("SELECT COALESCE(MAX(id), 0) AS id FROM events").fetch_one().await?;
        Ok(row.try_get("id")?)
    }
}

/// Every event after a starting point, in order, as it is committed: by this server
/// or (on PostgreSQL, heard through LISTEN/NOTIFY) another sharing the database.
/// What `/events/stream` and the event metrics follow. Cancel-safe: dropping a
/// pending [`EventFeed::next`] loses nothing.
pub struct EventFeed {
    store: Store,
    after: i64,
    changed: tokio::sync::watch::Receiver<u64>,
    /// The last read filled a page: read again without waiting.
    more: bool,
    /// The last read failed: try again after a pause, woken or not.
    failed: bool,
}

/// Events read at once.
const FEED_PAGE: i64 = 500;
/// How soon a failed read of the log is tried again.
const FEED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a feed reads the log without a notice: one indexed query per open
/// stream, against a notice that never came.
const FEED_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl EventFeed {
    /// The events after id `after`; subscribed before the first read, so nothing
    /// committed from now on is missed.
    pub fn new(store: &Store, after: i64) -> EventFeed {
        EventFeed { store: store.clone(), after, changed: store.watch_events(), more: true, failed: false }
    }

    /// The next events, waiting until there are some.
    pub async fn next(&mut self) -> Vec<Event> {
        loop {
            if !self.more {
                if self.failed {
                    tokio::time::sleep(FEED_RETRY).await;
                } else {
                    // Woken by a commit notice; and in any case every FEED_RECHECK,
                    // so a notice lost on its way (another server's NOTIFY, a
                    // listener reconnecting) delays an event, never withholds it.
                    tokio::select! {
                        changed = self.changed.changed() => {
                            if changed.is_err() {
                                // The store is gone: nothing more will come.
                                std::future::pending::<()>().await;
                            }
                        }
                        _ = tokio::time::sleep(FEED_RECHECK) => {}
                    }
                }
            }
            self.changed.mark_unchanged();
            match self.store.all_events(self.after, FEED_PAGE).await {
                Ok(events) => {
                    self.failed = false;
                    self.more = events.len() as i64 >= FEED_PAGE;
                    if let Some(last) = events.last() {
                        self.after = last.id;
                        return events;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event log failed; retrying");
                    (self.failed, self.more) = (true, false);
                }
            }
        }
    }
}
