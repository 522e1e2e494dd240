//! What changed in the database, as this process learns it: the event log, the
//! nodes DHCP serves, and leases another server committed.
//!
//! On PostgreSQL every server sharing the database hears every change through
//! LISTEN/NOTIFY: triggers notify `ramboot_events` and `ramboot_hosts` (migration
//! 0008), and the lease committer notifies `ramboot_leases` with the rows it wrote,
//! in the same transaction, so a notice is delivered only if its commit succeeded,
//! and in commit order. One listener connection per server fans the notices out.
//! A notice lost while that connection was down is made up for with a resync: the
//! event and node watchers re-read, and DHCP reloads every live lease.
//!
//! On SQLite there is one server, so a committed transaction that wrote events
//! bumps the event watch itself ([`super::db::Tx::commit`]).

use super::leases::LeaseState;
use ramboot_core::node::MacAddr;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

pub(super) const EVENTS_CHANNEL: &str = "ramboot_events";
pub(super) const HOSTS_CHANNEL: &str = "ramboot_hosts";
pub(super) const LEASES_CHANNEL: &str = "ramboot_leases";
/// Lease rows per notice: PostgreSQL caps a payload below 8,000 bytes and a row
/// takes at most about 60.
pub(super) const ROWS_PER_NOTICE: usize = 100;
/// Notices DHCP may fall behind by before it must resync from the table.
const LEASE_BACKLOG: usize = 4096;

/// A lease row as another server committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseChange {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub expires_at: u64,
    pub state: LeaseState,
}

/// What DHCP hears about leases written elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseNotice {
    /// Rows a lease commit of another process wrote.
    Changed(Vec<LeaseChange>),
    /// Notices may have been missed (the listener reconnected, or DHCP fell
    /// behind): reload every live lease from the table.
    Resync,
}

/// The fan-out of change notices inside this process.
#[derive(Debug)]
pub(super) struct Changes {
    /// This process among those sharing the database: its own lease notices come
    /// back to it and are skipped.
    pub origin: u64,
    events: watch::Sender<u64>,
    hosts: watch::Sender<u64>,
    leases: broadcast::Sender<Arc<LeaseNotice>>,
}

impl Changes {
    pub fn new() -> Arc<Changes> {
        let mut origin = [0u8; 8];
        // Uniqueness among a handful of servers is all that matters; a clock
        // fallback keeps an exhausted entropy source from stopping the server.
        if getrandom::fill(&mut origin).is_err() {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            origin = (nanos.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
        }
        Arc::new(Changes {
            origin: u64::from_le_bytes(origin),
            events: watch::Sender::new(0),
            hosts: watch::Sender::new(0),
            leases: broadcast::channel(LEASE_BACKLOG).0,
        })
    }

    pub fn events_changed(&self) {
        self.events.send_modify(|rev| *rev = rev.wrapping_add(1));
    }

    pub fn hosts_changed(&self) {
        self.hosts.send_modify(|rev| *rev = rev.wrapping_add(1));
    }

    pub fn watch_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    pub fn watch_hosts(&self) -> watch::Receiver<u64> {
        self.hosts.subscribe()
    }

    pub fn subscribe_leases(&self) -> LeaseNotices {
        LeaseNotices(self.leases.subscribe())
    }

    /// Everything may have changed unseen: wake every watcher.
    fn resync(&self) {
        self.events_changed();
        self.hosts_changed();
        let _ = self.leases.send(Arc::new(LeaseNotice::Resync));
    }

    /// Dispatch one notification from the database.
    fn heard(&self, channel: &str, payload: &str) {
        match channel {
            EVENTS_CHANNEL => self.events_changed(),
            HOSTS_CHANNEL => self.hosts_changed(),
            LEASES_CHANNEL => match decode_leases(payload) {
                Some((origin, _)) if origin == self.origin => {}
                Some((_, rows)) => {
                    let _ = self.leases.send(Arc::new(LeaseNotice::Changed(rows)));
                }
                None => {
                    tracing::warn!(payload, "unreadable lease notice; reloading leases");
                    let _ = self.leases.send(Arc::new(LeaseNotice::Resync));
                }
            },
            _ => {}
        }
    }
}

/// DHCP's subscription to lease notices.
pub struct LeaseNotices(broadcast::Receiver<Arc<LeaseNotice>>);

impl LeaseNotices {
    /// The next notice; [`LeaseNotice::Resync`] if this receiver fell behind.
    /// `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Arc<LeaseNotice>> {
        match self.0.recv().await {
            Ok(notice) => Some(notice),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Arc::new(LeaseNotice::Resync)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// `origin;ip mac expires state;…`: a lease notice's payload.
pub(super) fn encode_leases(origin: u64, rows: &[LeaseChange]) -> String {
    let mut text = format!("{origin:x}");
    for r in rows {
        text.push_str(&format!(";{} {} {} {}", r.ip, r.mac, r.expires_at, r.state.as_str()));
    }
    text
}

fn decode_leases(payload: &str) -> Option<(u64, Vec<LeaseChange>)> {
    let mut parts = payload.split(';');
    let origin = u64::from_str_radix(parts.next()?, 16).ok()?;
    let rows = parts
        .map(|row| {
            let mut f = row.split(' ');
            let change = LeaseChange {
                ip: f.next()?.parse().ok()?,
                mac: f.next()?.parse().ok()?,
                expires_at: f.next()?.parse().ok()?,
                state: f.next()?.parse().ok()?,
            };
            f.next().is_none().then_some(change)
        })
        .collect::<Option<Vec<_>>>()?;
    Some((origin, rows))
}

/// Listen on PostgreSQL until `cancel`, fanning notices out through `changes`.
/// A lost connection is retried every second; each reconnection is a resync.
pub(super) async fn listen(pool: sqlx::PgPool, changes: Arc<Changes>, cancel: CancellationToken) {
    use sqlx::postgres::PgListener;
    let channels = [EVENTS_CHANNEL, HOSTS_CHANNEL, LEASES_CHANNEL];
    let mut listener: Option<PgListener> = None;
    let mut healthy = true;
    loop {
        let step = async {
            let l = match &mut listener {
                Some(l) => l,
                None => {
                    let mut l = PgListener::connect_with(&pool).await?;
                    l.listen_all(channels).await?;
                    // Anything committed before LISTEN took effect was not heard.
                    changes.resync();
                    listener.insert(l)
                }
            };
            l.try_recv().await
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = step => r,
        };
        match result {
            Ok(Some(n)) => {
                healthy = true;
                changes.heard(n.channel(), n.payload());
            }
            // Reconnected: what was sent meanwhile is lost.
            Ok(None) => changes.resync(),
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "database change notices lost; retrying every second");
                    metrics::counter!("ramboot_db_listener_failures_total").increment(1);
                }
                healthy = false;
                listener = None;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_notices_round_trip_and_bad_ones_are_refused() {
        let rows = vec![
            LeaseChange {
                ip: Ipv4Addr::new(10, 0, 0, 7),
                mac: "02:00:00:00:00:07".parse().unwrap(),
                expires_at: 1_800_000_000,
                state: LeaseState::Active,
            },
            LeaseChange {
                ip: Ipv4Addr::new(10, 0, 0, 8),
                mac: "02:00:00:00:00:08".parse().unwrap(),
                expires_at: 0,
                state: LeaseState::Released,
            },
        ];
        let text = encode_leases(0xfeed, &rows);
        assert_eq!(decode_leases(&text), Some((0xfeed, rows.clone())));
        assert!(text.len() < 8000 / ROWS_PER_NOTICE * rows.len() + 20);
        for bad in ["", "zz;10.0.0.1 02:00:00:00:00:01 5 active", "1;10.0.0.1 02:00:00:00:00:01 5", "1;x y 5 active"] {
            assert_eq!(decode_leases(bad), None, "{bad:?}");
        }
        assert_eq!(decode_leases("1"), Some((1, vec![])));
    }

    #[tokio::test]
    async fn own_lease_notices_are_skipped_and_others_fanned_out() {
        let changes = Changes::new();
        let mut notices = changes.subscribe_leases();
        let row = "10.0.0.7 02:00:00:00:00:07 99 active";
        changes.heard(LEASES_CHANNEL, &format!("{:x};{row}", changes.origin));
        changes.heard(LEASES_CHANNEL, &format!("{:x};{row}", changes.origin ^ 1));
        let got = notices.next().await.unwrap();
        assert!(matches!(&*got, LeaseNotice::Changed(rows) if rows.len() == 1 && rows[0].expires_at == 99));
        changes.heard(LEASES_CHANNEL, "garbage");
        assert_eq!(*notices.next().await.unwrap(), LeaseNotice::Resync);
    }

    /// Two servers on one PostgreSQL database: each hears the other's leases,
    /// events and node changes, and not its own leases.
    #[tokio::test]
    async fn servers_sharing_postgres_hear_each_others_changes() {
        use crate::store::testing::{grant, MAC};
        use crate::store::{EventKind, Store};
        let Some(db) = crate::store::testdb::TestDb::postgres() else { return };
        let (a, b) = (Store::open(db.url()).await.unwrap(), Store::open(db.url()).await.unwrap());
        let cancel = CancellationToken::new();
        for s in [&a, &b] {
            tokio::spawn({
                let (s, cancel) = (s.clone(), cancel.clone());
                async move { s.listen(cancel).await }
            });
        }
        let (mut a_leases, mut b_leases) = (a.lease_notices(), b.lease_notices());
        let (mut b_events, mut b_hosts) = (b.watch_events(), b.watch_hosts());
        // Each listener resyncs once it is listening: from then on nothing is missed.
        let wait = Duration::from_secs(10);
        for notices in [&mut a_leases, &mut b_leases] {
            let first = tokio::time::timeout(wait, notices.next()).await.unwrap().unwrap();
            assert_eq!(*first, LeaseNotice::Resync);
        }
        b_events.mark_unchanged();
        b_hosts.mark_unchanged();

        a.commit_dhcp(&[grant(MAC, [10, 0, 0, 9], 1_900_000_000, true)], 1).await.unwrap();
        let heard = tokio::time::timeout(wait, b_leases.next()).await.unwrap().unwrap();
        let LeaseNotice::Changed(rows) = &*heard else { panic!("{heard:?}") };
        assert_eq!(
            rows[..],
            [LeaseChange {
                ip: Ipv4Addr::new(10, 0, 0, 9),
                mac: MAC,
                expires_at: 1_900_000_000,
                state: LeaseState::Active
            }]
        );
        // The netboot client became a node, with an event: b's watchers wake.
        tokio::time::timeout(wait, b_hosts.changed()).await.unwrap().unwrap();
        tokio::time::timeout(wait, b_events.changed()).await.unwrap().unwrap();
        let node = b.node_by_mac(MAC).await.unwrap().unwrap().id;
        b_events.mark_unchanged();
        a.add_event(node, None, EventKind::Info, "from a", 2).await.unwrap();
        tokio::time::timeout(wait, b_events.changed()).await.unwrap().unwrap();
        // a's own lease notice came back to it and was skipped.
        assert!(tokio::time::timeout(Duration::from_millis(300), a_leases.next()).await.is_err());
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_committed_event_wakes_event_watchers_on_sqlite() {
        use crate::store::testing::{grant, sqlite_store, MAC};
        let (s, _dir) = sqlite_store().await;
        let mut events = s.watch_events();
        events.mark_unchanged();
        // A lease that makes a node writes events inside the lease transaction.
        s.commit_dhcp(&[grant(MAC, [10, 0, 0, 9], 1_900_000_000, true)], 1).await.unwrap();
        assert!(events.has_changed().unwrap());
    }
}
