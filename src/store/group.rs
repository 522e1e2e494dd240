//! Group commit of the store's write transactions (everything but DHCP's lease
//! commits, which batch on their own): the HTTP tier's script, hello, plan and
//! event writes, and the operators'.
//!
//! Each write used to be a transaction of its own, with one fsync (SQLite) or one
//! WAL flush (PostgreSQL) each, one after another behind the database's one write
//! lock: in a boot storm every node's handful of writes queued for the disk. Now
//! writers that arrive together share one transaction:
//!
//! - a writer takes the group's lock (a fair, FIFO mutex), opens the shared
//!   transaction if none is open, and runs its statements inside a `SAVEPOINT`;
//! - on success it releases the savepoint, hands the lock on and waits for the
//!   group's `COMMIT`; on an error (or if its future is dropped midway) its
//!   savepoint is rolled back before anyone else touches the transaction, so one
//!   failed write never takes the others with it;
//! - the commit is a task queued on the same lock behind the writers already
//!   waiting: it commits all of them at once and tells each the outcome. A lone
//!   writer commits as soon as it is done, as before.
//!
//! A writer's result is only reported after the commit that made it durable, so
//! callers see exactly what they saw before: a write that returned `Ok` is on disk.
//! A group holds at most [`MAX_WRITERS`], which bounds how long the write lock is
//! held (DHCP's committer waits for it on SQLite).
//!
//! On SQLite the group has a connection of its own ([`Tx::sync`]), as DHCP's
//! committer does: a writer's statements run right where it awaits them, a few
//! microseconds each, where sqlx's driver would hand every statement to its
//! thread and back while the writers behind wait for the lock. What may block
//! (`BEGIN IMMEDIATE`, and the fsync of `COMMIT`) runs on a blocking-pool thread.
//! The group and DHCP's committer take turns at SQLite's write lock in arrival
//! order (`db::sync::SqliteFile`).

use super::db::sync;
use super::db::{Backend, Sql, Tx};
use super::{StoreError, WriteRefused};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

/// Writers committed together at most.
pub(super) const MAX_WRITERS: usize = 256;

/// How a group's commit went, as every writer in it hears it.
#[derive(Debug, Clone)]
enum Outcome {
    Committed,
    Refused(WriteRefused, String),
    Failed(String),
}

/// The open group: its transaction and who waits for its commit.
#[derive(Default)]
pub(super) struct Group {
    tx: Option<Tx<'static>>,
    /// Writers whose savepoints were released into `tx`.
    writers: usize,
    /// A writer left its savepoint open (an error, or its future was dropped):
    /// rolled back before the transaction is used again.
    abandoned: bool,
    /// A commit task is queued on the lock.
    commit_queued: bool,
    /// The outcome of `tx`'s commit; a fresh channel for each group.
    outcome: Option<watch::Sender<Option<Outcome>>>,
    /// Groups committed so far (the tests count them).
    committed: u64,
    /// On SQLite, the group's own connection between transactions: opened on
    /// first use, and again after a failure lost it.
    idle: Option<rusqlite::Connection>,
}

/// The lock over the open group, one per back-end.
pub(super) type Groups = Arc<Mutex<Group>>;

/// One writer's turn: its statements run on the shared transaction (it derefs to
/// [`Tx`]) inside its own savepoint. [`Write::commit`] reports once the group is
/// durable; dropping it instead rolls its statements back.
pub(super) struct Write {
    /// Always held until [`Write::commit`] hands it on, or the writer is dropped.
    group: Option<OwnedMutexGuard<Group>>,
    groups: Groups,
}

impl Backend {
    /// Join the open group of writers (see the module doc), holding the database's
    /// write lock as [`Backend::begin_write_alone`] does, and start a savepoint.
    pub async fn begin_write(&self) -> Result<Write, StoreError> {
        let mut group = self.groups.clone().lock_owned().await;
        group.roll_back_abandoned().await;
        if group.writers >= MAX_WRITERS {
            group.commit().await;
        }
        if group.tx.is_none() {
            group.tx = Some(group.begin(self).await?);
            group.outcome = Some(watch::channel(None).0);
        }
        let tx = group.tx.as_mut().expect("opened above");
        if let Err(e) = tx.sql("SAVEPOINT writer").execute().await {
            // The transaction is unusable (the connection went away): end it, and
            // with it everyone released into it.
            let e = StoreError::from(e);
            group.fail(&e);
            return Err(e);
        }
        group.abandoned = true;
        Ok(Write { group: Some(group), groups: self.groups.clone() })
    }
}

impl Write {
    /// Keep this writer's statements, and return once the group they joined has
    /// committed (or failed to: then nothing of this write was saved either).
    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.release().await?;
        let mut group = self.group.take().expect("held until now");
        group.abandoned = false;
        group.writers += 1;
        let mut outcome = group.outcome.as_ref().expect("opened with the transaction").subscribe();
        queue_commit(&mut group, &self.groups);
        drop(group);
        let heard = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
        match heard {
            Ok(Some(Outcome::Committed)) => Ok(()),
            Ok(Some(Outcome::Refused(reason, message))) => Err(StoreError::Unwritable {
                reason,
                source: sqlx::Error::Io(std::io::Error::other(format!("the group commit failed: {message}"))),
            }),
            Ok(Some(Outcome::Failed(message))) => Err(StoreError::GroupCommit(message)),
            // The commit task never ran to the end (the runtime is shutting down).
            Ok(None) | Err(_) => Err(StoreError::GroupCommit("the commit was abandoned (shutting down)".into())),
        }
    }

    async fn release(&mut self) -> Result<(), StoreError> {
        self.sql("RELEASE writer").execute().await?;
        Ok(())
    }
}

impl Drop for Write {
    /// A writer that did not commit (an error, or its future dropped): its
    /// savepoint is rolled back by the next holder of the lock, and a commit is
    /// queued so that the transaction (and the database's write lock) does not
    /// stay open waiting for another writer.
    fn drop(&mut self) {
        if let Some(mut group) = self.group.take() {
            queue_commit(&mut group, &self.groups);
        }
    }
}

/// Queue a commit of the open group on the lock, unless one is queued already.
/// It runs behind the writers already waiting: they join the group first.
fn queue_commit(group: &mut Group, groups: &Groups) {
    if group.commit_queued {
        return;
    }
    // Outside a runtime (a dropped writer at shutdown) the transaction rolls back
    // as the process ends; nothing is lost that was reported saved.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    group.commit_queued = true;
    let groups = groups.clone();
    runtime.spawn(async move {
        let mut group = groups.lock_owned().await;
        group.commit_queued = false;
        group.commit().await;
    });
}

impl Sql for Write {
    fn sql<'q>(&mut self, sql: &'q str) -> super::db::Stmt<'_, 'q> {
        Tx::sql(self, sql)
    }

    fn wrote_events(&mut self) {
        Sql::wrote_events(&mut **self);
    }
}

impl Deref for Write {
    type Target = Tx<'static>;

    fn deref(&self) -> &Tx<'static> {
        self.group.as_ref().and_then(|g| g.tx.as_ref()).expect("a writer always has the group's transaction")
    }
}

impl DerefMut for Write {
    fn deref_mut(&mut self) -> &mut Tx<'static> {
        self.group.as_mut().and_then(|g| g.tx.as_mut()).expect("a writer always has the group's transaction")
    }
}

impl Group {
    /// Undo what a writer left half done, before anyone else uses the transaction.
    /// `abandoned` stays set until the undo is done: if this future is dropped
    /// midway, the next holder undoes it again (or fails the group), rather than
    /// committing the abandoned statements.
    async fn roll_back_abandoned(&mut self) {
        if !self.abandoned {
            return;
        }
        let Some(tx) = self.tx.as_mut() else {
            self.abandoned = false;
            return;
        };
        let undone = match tx.sql("ROLLBACK TO writer").execute().await {
            Ok(_) => tx.sql("RELEASE writer").execute().await,
            Err(e) => Err(e),
        };
        match undone {
            Ok(_) => self.abandoned = false,
            Err(e) => self.fail(&e.into()),
        }
    }

    /// At the store's close: commit what the open group holds, and close the
    /// group's connection.
    pub(super) async fn close(&mut self) {
        self.commit().await;
        self.idle = None;
    }

    /// Open the group's transaction, holding the database's write lock.
    async fn begin(&mut self, backend: &Backend) -> Result<Tx<'static>, StoreError> {
        let Some(file) = &backend.sqlite else { return backend.begin_write_alone().await };
        let turn = sync::take_turn(&file.turns).await?;
        let (path, idle, changes) = (file.path.clone(), self.idle.take(), backend.changes.clone());
        // A connection whose `BEGIN` failed is dropped: the next group opens one.
        let begun = tokio::task::spawn_blocking(move || {
            let conn = match idle {
                Some(conn) => conn,
                None => sync::open(&path)?,
            };
            Tx::sync(sync::Conn::Owned(conn), turn, changes)
        })
        .await;
        match begun {
            Ok(begun) => Ok(begun?),
            Err(e) => Err(StoreError::GroupCommit(format!("the transaction's thread failed: {e}"))),
        }
    }

    /// Commit the open transaction and tell its writers. The commit runs to the
    /// end and its writers hear the outcome even if this future is dropped.
    async fn commit(&mut self) {
        self.roll_back_abandoned().await;
        let Some(tx) = self.tx.take() else { return };
        let sender = self.outcome.take();
        let writers = std::mem::take(&mut self.writers);
        let blocking = tx.is_sync();
        let finish = async move {
            let started = std::time::Instant::now();
            let (committed, conn) = tx.finish().await;
            metrics::histogram!("ramboot_db_group_commit_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("ramboot_db_group_commit_writers").record(writers as f64);
            let outcome = match committed {
                Ok(()) => Outcome::Committed,
                Err(e) => outcome_of(&e.into()),
            };
            if let Some(sender) = sender {
                let _ = sender.send(Some(outcome));
            }
            conn
        };
        let conn = if blocking {
            tokio::task::spawn_blocking(move || futures_executor::block_on(finish)).await
        } else {
            tokio::spawn(finish).await
        };
        self.committed += 1;
        // A thread that failed took the connection with it: the next group opens one.
        self.idle = conn.ok().flatten();
    }

    /// End the open transaction unsaved (it rolls back as it drops) and tell its
    /// writers why.
    fn fail(&mut self, e: &StoreError) {
        self.tx = None;
        self.abandoned = false;
        self.tell(outcome_of(e));
    }

    fn tell(&mut self, outcome: Outcome) {
        if let Some(sender) = self.outcome.take() {
            let _ = sender.send(Some(outcome));
        }
        self.writers = 0;
    }
}

fn outcome_of(e: &StoreError) -> Outcome {
    match e {
        StoreError::Unwritable { reason, source } => Outcome::Refused(*reason, source.to_string()),
        other => Outcome::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::events::{insert, NewEvent};
    use super::super::testing::{sqlite_store, store, MAC};
    use super::super::{EventKind, StoreError, WriteRefused};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_that_arrive_together_share_one_commit_and_each_is_durable() {
        let (store, _guard) = store().await;
        let node = store.ensure_node(MAC, 1).await.unwrap();
        // Hold the group while the writers line up behind it, as a slow commit would.
        let held = store.backend.groups.clone().lock_owned().await;
        let before = held.committed;
        let writers: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.add_event(node.id, None, EventKind::Info, &format!("w{i}"), 2).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(held);
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let committed = store.backend.groups.lock().await.committed - before;
        assert_eq!(committed, 1, "40 writers that waited together commit together");
        let events = store.events(node.id, 0, 1000).await.unwrap();
        let written = events.iter().filter(|e| e.message.starts_with('w')).count();
        assert_eq!(written, 40, "every writer told Ok is in the database");
        store.close().await;
    }

    #[tokio::test]
    async fn a_write_that_waits_out_the_busy_timeout_for_its_turn_is_refused_as_busy() {
        let (store, _dir) = sqlite_store().await;
        let node = store.ensure_node(MAC, 1).await.unwrap();
        // Another writer of this process (DHCP's committer, say) holds SQLite's
        // write lock for longer than a write may wait.
        let file = store.backend.sqlite.as_ref().expect("a SQLite store");
        let held = file.turns.clone().lock_owned().await;
        let err = store.add_event(node.id, None, EventKind::Info, "late", 2).await.expect_err("refused");
        assert!(matches!(err, StoreError::Unwritable { reason: WriteRefused::Busy, .. }), "{err:?}");
        drop(held);
        store.add_event(node.id, None, EventKind::Info, "in turn", 3).await.expect("the next write commits");
        let messages: Vec<String> =
            store.events(node.id, 0, 100).await.unwrap().into_iter().map(|e| e.message).collect();
        assert!(messages.contains(&"in turn".to_string()) && !messages.contains(&"late".to_string()), "{messages:?}");
        store.close().await;
    }

    #[tokio::test]
    async fn a_writer_that_fails_is_undone_alone_and_frees_the_write_lock() {
        let (store, _guard) = store().await;
        let node = store.ensure_node(MAC, 1).await.unwrap();
        // A writer that wrote, then gave up (an error returned with `?`, or its
        // request dropped): nobody else comes along to commit.
        let mut doomed = store.backend.begin_write().await.unwrap();
        insert(&mut doomed, &NewEvent::note(node.id, None, EventKind::Info, "doomed"), 2).await.unwrap();
        drop(doomed);
        // The group's transaction ends on its own: a write of its own gets the lock.
        let alone = tokio::time::timeout(Duration::from_secs(5), store.backend.begin_write_alone()).await;
        alone.expect("the write lock is free again").unwrap().commit().await.unwrap();

        // A writer that fails inside a group of others: only its statements go.
        let mut doomed = store.backend.begin_write().await.unwrap();
        insert(&mut doomed, &NewEvent::note(node.id, None, EventKind::Info, "doomed too"), 3).await.unwrap();
        let kept = {
            let store = store.clone();
            tokio::spawn(async move { store.add_event(node.id, None, EventKind::Info, "kept", 4).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(doomed);
        kept.await.unwrap().unwrap();
        let messages: Vec<String> =
            store.events(node.id, 0, 100).await.unwrap().into_iter().map(|e| e.message).collect();
        assert!(messages.contains(&"kept".to_string()), "{messages:?}");
        assert!(!messages.iter().any(|m| m.starts_with("doomed")), "{messages:?}");
        store.close().await;
    }
}

/// Measurements, not checks. `group_writer_cost` (`cargo test --release --lib
/// group_writer_cost -- --ignored --nocapture`): 2,000 event writes at once on
/// SQLite, the wall time, the process's CPU per write and how many groups they
/// made. Each writer holds the group's lock for its statements (SAVEPOINT, INSERT,
/// RELEASE): with sqlx's SQLite driver, one driver-thread round trip each bounded a
/// storm's writes, not the fsync; on the group's own connection they take a few µs.
#[cfg(test)]
mod measure {
    use super::super::testing::{process_cpu_seconds, sqlite_store, MAC};
    use super::super::{EventKind, LeaseOp, NodeId, Store, StoreError};
    use ramboot_core::node::MacAddr;
    use std::time::{Duration, Instant};

    /// `count` event writes at once, each a task of its own.
    fn spawn_event_writes(
        store: &Store,
        node: NodeId,
        count: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<(), StoreError>>> {
        let write = |i| {
            let store = store.clone();
            async move { store.add_event(node, None, EventKind::Info, &format!("w{i}"), 2).await }
        };
        (0..count).map(|i| tokio::spawn(write(i))).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test"]
    async fn group_writer_cost() {
        let (store, _dir) = sqlite_store().await;
        let node = store.ensure_node(MAC, 1).await.unwrap();
        for round in 0..3 {
            let started = std::time::Instant::now();
            let cpu_before = process_cpu_seconds();
            let writers = spawn_event_writes(&store, node.id, 2000);
            for w in writers {
                w.await.unwrap().unwrap();
            }
            let cpu_us_per_write = (process_cpu_seconds() - cpu_before) * 1e6 / 2000.0;
            let committed = store.backend.groups.lock().await.committed;
            eprintln!(
                "round {round}: 2000 writers in {:?}, cpu {cpu_us_per_write:.0} us/writer, groups so far {committed}",
                started.elapsed()
            );
        }
    }

    /// How long DHCP's lease commits take on SQLite while 4,000 grouped event
    /// writes arrive at once (`cargo test --release --lib lease_commit_wait --
    /// --ignored --nocapture`): both queue on this process's turns at the write
    /// lock (`db::sync::SqliteFile`), not on SQLite's busy handler.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test"]
    async fn lease_commit_wait() {
        let (store, _dir) = sqlite_store().await;
        let node = store.ensure_node(MAC, 1).await.unwrap();
        let mut writer = store.sync_lease_writer().unwrap().expect("a SQLite writer");
        for round in 0..3u32 {
            let started = Instant::now();
            let writers = spawn_event_writes(&store, node.id, 4000);
            let store2 = store.clone();
            let (back, mut waits) = tokio::task::spawn_blocking(move || {
                let mut waits: Vec<Duration> = Vec::new();
                for i in 0..100u32 {
                    let n = round * 100 + i;
                    let mac = MacAddr([2, 0, 0, 0, (n >> 8) as u8, n as u8]);
                    let ip = std::net::Ipv4Addr::from(0x0a00_0a00 + n);
                    let grant = LeaseOp::Grant {
                        mac,
                        ip,
                        expires_at: 100_000,
                        netboot: false,
                        known: false,
                        arch: None,
                        uuid: None,
                    };
                    let asked = Instant::now();
                    store2.commit_dhcp_sync(&mut writer, &[grant], 1).unwrap();
                    waits.push(asked.elapsed());
                }
                (writer, waits)
            })
            .await
            .unwrap();
            writer = back;
            for w in writers {
                w.await.unwrap().unwrap();
            }
            waits.sort();
            eprintln!(
                "round {round}: 4000 event writes and 100 lease commits in {:?}; lease commit p50 {:?}, p99 {:?}, max {:?}",
                started.elapsed(),
                waits[50],
                waits[98],
                waits[99]
            );
        }
    }
}
