//! Durable node state: the `Store` facade, its back-end, its errors and the helpers
//! every table module shares. Each table's SQL and row types live in its own module.
//!
//! SQLite (WAL; the default) or PostgreSQL (`database: postgres://…`) through sqlx
//! with runtime queries, each written once for both (see `db`), over one schema
//! migrated per back-end (`migrations/sqlite`, `migrations/postgres`), under one
//! test suite (`RAMBOOT_TEST_POSTGRES`, see `testdb`). Every state move and its
//! event are written in one transaction; a lease is written before the DHCP ACK
//! that announces it.
//! Callers pass `now` in, so the store has no clock of its own.
//!
//! A write the database refuses for want of room or permission (disk full,
//! read-only, I/O error, busy past the timeout) is [`StoreError::Unwritable`], with
//! the reason in words: nothing of it was saved, reads go on working, and the next
//! write succeeds once the cause is gone (nothing to restart).

mod audit;
mod boots;
mod changes;
pub mod copy;
mod db;
mod events;
mod group;
mod leases;
mod leases6;
mod nodes;
mod reboots;
mod rollouts;
mod sessions;
#[cfg(test)]
pub(crate) mod testdb;
mod tokens;
mod views;
mod volumes;

pub use audit::{changed_fields, Actor, AuditFilter, AuditRecord, Target};
pub use boots::{Boot, BootImage, BootStart, Release};
pub use changes::{LeaseChange, LeaseNotice, LeaseNotices};
pub use events::{Event, EventFeed, EventKind};
pub use leases::{Lease, LeaseOp, LeaseState, SyncLeaseWriter, Taken};
pub use leases6::{Lease6, Lease6Op, Taken6};
pub use nodes::{default_hostname, last_seen_ms, Node, NodeChange, NodeFilter, NodeSort};
pub use rollouts::{NewRollout, RolloutEventRow, RolloutHooks, RolloutRow, RolloutTarget};
pub use tokens::{Role, TokenInfo};
pub use volumes::Volume;

use changes::Changes;
use db::{Backend, Pool, Row, Sql, Tx};
use ramboot_core::node::{MacAddr, NodeState};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub type NodeId = i64;
pub type BootId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Any other database error (see the `From<sqlx::Error>` impl).
    #[error("database: {0}")]
    Db(sqlx::Error),
    /// The database would not take a write: nothing of it was saved.
    #[error("database write refused: {reason} ({source})")]
    Unwritable {
        reason: WriteRefused,
        #[source]
        source: sqlx::Error,
    },
    /// The group commit this write joined failed for a reason that is not a
    /// refusal (see `store::group`): nothing of the write was saved.
    #[error("database: the commit this write joined failed: {0}")]
    GroupCommit(String),
    /// PostgreSQL could not be reached or refused the login.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database_password_file: {0}")]
    PasswordFile(crate::secrets::SecretsError),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database was migrated by a newer ramboot: this one would not know its
    /// tables, so it touches nothing.
    #[error(
        "the database's schema is version {at}, newer than this ramboot knows (up to {latest}): \
         run the ramboot that migrated it, or restore the backup taken before that upgrade"
    )]
    NewerSchema { at: i64, latest: i64 },
    #[error("no node {0}")]
    NoSuchNode(String),
    #[error("node {node} cannot move from {from} to {to} in this boot")]
    BadTransition { node: NodeId, from: NodeState, to: NodeState },
    #[error("boot {0} is no longer the node's current boot")]
    StaleBoot(BootId),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("a node with MAC {0} already exists")]
    DuplicateMac(MacAddr),
    #[error("a token named {0:?} already exists")]
    DuplicateToken(String),
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    #[error("no volume named {0:?}")]
    NoSuchVolume(String),
    #[error("a volume named {0:?} already exists")]
    DuplicateVolume(String),
    #[error("volume {volume:?} is attached to node {node}; detach it first")]
    VolumeAttached { volume: String, node: NodeId },
    #[error("this is the last admin token without an expiry; create another one first")]
    LastAdmin,
    #[error("the {field} of node {mac} is declared in inventory file {file}; change it there")]
    DeclaredInFile { mac: MacAddr, field: &'static str, file: String },
    #[error("node {mac} is declared in inventory file {file}; remove it there first")]
    DeclaredNode { mac: MacAddr, file: String },
    #[error("no rollout {0}")]
    NoSuchRollout(i64),
    #[error("{0}")]
    RolloutRefused(String),
    #[error("node {node} is in rollout {rollout}, which has not ended; abort it or wait")]
    NodeInRollout { node: NodeId, rollout: i64 },
    #[error("{ip} is already reserved for node {node}")]
    ReservedElsewhere { ip: Ipv4Addr, node: NodeId },
    #[error("{ip} is leased to {mac}; reserve it with take_over to end that lease")]
    LeasedElsewhere { ip: Ipv4Addr, mac: String },
}

/// Why the database refused a write, in the operator's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefused {
    /// SQLITE_FULL: the file system (or the database's size limit) is full.
    /// PostgreSQL: 53100 disk_full.
    DiskFull,
    /// SQLITE_READONLY: the file, its directory or the file system is read-only.
    /// PostgreSQL: 25006 read_only_sql_transaction (a standby, or read-only by setting).
    ReadOnly,
    /// SQLITE_IOERR: the OS failed the write (some file systems report ENOSPC this way).
    /// PostgreSQL: 58030 io_error.
    Io,
    /// SQLITE_BUSY: another writer held the database past the busy timeout.
    /// PostgreSQL: 55P03 (lock_timeout), 40001 serialization failure, 40P01 deadlock.
    Busy,
    /// PostgreSQL could not be reached: no connection could be made or begun, or
    /// the connection broke (I/O error, SQLSTATE class 08, 57P01–57P03 shutdown).
    Unreachable,
}

impl WriteRefused {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            WriteRefused::DiskFull => "disk_full",
            WriteRefused::ReadOnly => "read_only",
            WriteRefused::Io => "io",
            WriteRefused::Busy => "busy",
            WriteRefused::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for WriteRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteRefused::DiskFull => "disk full",
            WriteRefused::ReadOnly => "database is read-only",
            WriteRefused::Io => "I/O error writing the database",
            WriteRefused::Busy => "database busy (another writer held it past the timeout)",
            WriteRefused::Unreachable => "database unreachable (connection refused or lost)",
        })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match db::write_refused(&e) {
            Some(reason) => StoreError::Unwritable { reason, source: e },
            None => StoreError::Db(e),
        }
    }
}

/// The one type callers hold. Its methods live in the table modules, one
/// `impl Store` block each.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// DHCP's lease committer writes through a connection of its own, so a batch
    /// of ACKs never waits for a connection behind HTTP's queries (SQLite has one
    /// writer anyway; this takes the pool out of the wait).
    dhcp_writer: Backend,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// A pool of at most `max` connections that never hands out a connection stuck in
/// a transaction. When a COMMIT fails (disk full), SQLite has already rolled the
/// transaction back, but sqlx still counts it open: its rollback then fails, and the
/// connection would refuse every later `BEGIN` ("invalid savepoint"), so DHCP
/// would never recover. Such a connection is closed on release instead (a new one
/// is opened on demand). PostgreSQL's pools keep the same rule; there sqlx counts
/// the rollback as done once it is queued, so no round trip is spent looking.
fn pool_options<DB: sqlx::Database>(max: u32) -> sqlx::pool::PoolOptions<DB> {
    use sqlx::{Connection, TransactionManager};
    // A database that cannot be reached fails a write after WRITE_WAIT, as a busy
    // one does, rather than sqlx's default 30 s: DHCP's batches must not pile up.
    sqlx::pool::PoolOptions::<DB>::new().max_connections(max).acquire_timeout(WRITE_WAIT).after_release(|conn, _| {
        Box::pin(async move {
            if DB::NAME == <sqlx::Sqlite as sqlx::Database>::NAME {
                // Flush the rollback a dropped transaction queued, then look.
                conn.ping().await?;
            }
            Ok(DB::TransactionManager::get_transaction_depth(conn) == 0)
        })
    })
}

/// How long a write waits for another writer before it is refused as busy
/// (SQLite's busy timeout; PostgreSQL's `lock_timeout`).
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// Is `url` a PostgreSQL URL (rather than SQLite's)?
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Store {
    /// Open (creating if needed) and migrate the database at `url`: `sqlite://…`,
    /// or `postgres://…` (its password from `PGPASSWORD`, if it needs one).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::connect(url, None).await
    }

    /// [`Store::open`], with PostgreSQL's password read from `password_file` (which
    /// must be private to this user, as the `secrets:` file).
    pub async fn connect(url: &str, password_file: Option<&Path>) -> Result<Store, StoreError> {
        let changes = Changes::new();
        let (pool, dhcp_writer, sqlite) = if is_postgres_url(url) {
            let (pool, dhcp_writer) = open_postgres(url, password_file).await?;
            (pool, dhcp_writer, None)
        } else {
            let (pool, dhcp_writer, file) = open_sqlite(url).await?;
            (pool, dhcp_writer, Some(db::sync::SqliteFile::new(file)))
        };
        Ok(Store {
            backend: Backend { pool, changes: changes.clone(), groups: Default::default(), sqlite: sqlite.clone() },
            dhcp_writer: Backend { pool: dhcp_writer, changes, groups: Default::default(), sqlite },
        })
    }

    /// Hear what other servers sharing this database change, until `cancel`
    /// (PostgreSQL's LISTEN/NOTIFY; a SQLite file has one server, nothing to hear).
    pub async fn listen(&self, cancel: tokio_util::sync::CancellationToken) {
        if let Pool::Postgres(pool) = &self.backend.pool {
            changes::listen(pool.clone(), self.backend.changes.clone(), cancel).await;
        }
    }

    /// A receiver that changes whenever an event may have been added (by any
    /// server, once [`Store::listen`] runs).
    pub fn watch_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes().watch_events()
    }

    /// Leases other servers commit (PostgreSQL, once [`Store::listen`] runs).
    pub fn lease_notices(&self) -> LeaseNotices {
        self.changes().subscribe_leases()
    }

    fn changes(&self) -> &Arc<Changes> {
        &self.backend.changes
    }

    pub async fn close(&self) {
        self.dhcp_writer.close().await;
        self.backend.close().await;
    }

    /// A receiver that changes whenever DHCP's view of the nodes may have changed
    /// (a node appears or goes, its hostname or reservation changes).
    pub fn watch_hosts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes().watch_hosts()
    }

    fn hosts_changed(&self) {
        self.changes().hosts_changed();
    }
}

/// Where a database's schema stands against this build's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// No database yet (a SQLite file that does not exist): created at start.
    NotCreated,
    /// Migrated up to `at` (0: none); `latest` is what this build knows.
    At { at: i64, latest: i64 },
}

/// The newest migration this build has, per back-end.
fn latest_migration(postgres: bool) -> i64 {
    let migrator =
        if postgres { sqlx::migrate!("./migrations/postgres") } else { sqlx::migrate!("./migrations/sqlite") };
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The newest migration applied to the database behind `pool` (0: none yet).
async fn applied_migration<'e, E>(executor: E) -> Result<i64, StoreError>
where
    E: sqlx::Executor<'e>,
    for<'r> (Option<i64>,): sqlx::FromRow<'r, <E::Database as sqlx::Database>::Row>,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
{
    match sqlx::query_as::<_, (Option<i64>,)>("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(executor)
        .await
    {
        Ok((at,)) => Ok(at.unwrap_or(0)),
        // No table: nothing was ever migrated.
        Err(sqlx::Error::Database(e)) if e.message().contains("_sqlx_migrations") => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Refuse a database a newer ramboot migrated (before migrating anything).
fn check_not_newer(at: i64, postgres: bool) -> Result<(), StoreError> {
    let latest = latest_migration(postgres);
    if at > latest {
        return Err(StoreError::NewerSchema { at, latest });
    }
    Ok(())
}

impl Store {
    /// Where the database at `url` stands, without creating or migrating it.
    pub async fn schema(url: &str, password_file: Option<&Path>) -> Result<Schema, StoreError> {
        if is_postgres_url(url) {
            let mut options = PgConnectOptions::from_str(url)?.application_name("ramboot doctor");
            if let Some(path) = password_file {
                options = options.password(&read_password_file(path)?);
            }
            let unreachable = |source| StoreError::Connect { target: describe(&options), source };
            let pool: sqlx::PgPool = pool_options(1).connect_with(options.clone()).await.map_err(unreachable)?;
            let at = applied_migration(&pool).await;
            pool.close().await;
            return Ok(Schema::At { at: at?, latest: latest_migration(true) });
        }
        let options = SqliteConnectOptions::from_str(url)?.read_only(true);
        if !options.get_filename().exists() {
            return Ok(Schema::NotCreated);
        }
        let pool: sqlx::SqlitePool = pool_options(1).connect_with(options).await?;
        let at = applied_migration(&pool).await;
        pool.close().await;
        Ok(Schema::At { at: at?, latest: latest_migration(false) })
    }
}

/// Where [`backup_before_migrating`] keeps the copy of `db` at schema `at`: named by
/// the schema and by the ramboot that migrated past it.
pub fn backup_path(db: &Path, at: i64) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".schema-{at}.before-ramboot-{}", env!("CARGO_PKG_VERSION")));
    std::path::PathBuf::from(name)
}

/// A consistent copy of the database (`VACUUM INTO`: one read transaction, so
/// never a half-written file) before this ramboot migrates it: a failed or
/// regretted upgrade goes back by putting it in place. Kept; never overwritten.
async fn backup_before_migrating(pool: &sqlx::SqlitePool, db: &Path, at: i64) -> Result<(), StoreError> {
    let target = backup_path(db, at);
    if target.exists() {
        return Ok(());
    }
    let partial = target.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let io = |e: std::io::Error| StoreError::Db(sqlx::Error::Io(e));
    sqlx::query("VACUUM INTO $1").bind(partial.to_string_lossy().into_owned()).execute(pool).await?;
    crate::files::restrict_file(&partial).map_err(io)?;
    std::fs::rename(&partial, &target).map_err(io)?;
    tracing::info!(backup = %target.display(), schema = at, "database backed up before its migration");
    Ok(())
}

/// The HTTP pool and DHCP's lease writer of a SQLite database, and its file.
async fn open_sqlite(url: &str) -> Result<(Pool, Pool, PathBuf), StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL + NORMAL is durable against process crashes; FULL also against power
        // loss, which is what "committed before the ACK" must mean.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(WRITE_WAIT);
    restrict_database_files(&options)?;
    let pool = pool_options(4).connect_with(options.clone()).await?;
    // SQLite creates -wal and -shm with the database's mode; an older one may
    // have left them looser.
    restrict_database_files(&options)?;
    let at = applied_migration(&pool).await?;
    check_not_newer(at, false)?;
    if at > 0 && at < latest_migration(false) {
        backup_before_migrating(&pool, options.get_filename(), at).await?;
    }
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    // Opened on first use: a CLI or test that never commits leases never opens it.
    let file = options.get_filename().to_path_buf();
    let dhcp_writer = pool_options(1).connect_lazy_with(options);
    Ok((Pool::Sqlite(pool), Pool::Sqlite(dhcp_writer), file))
}

/// The HTTP pool and DHCP's lease writer of a PostgreSQL database. Commits are
/// synchronous (PostgreSQL's default, kept): a commit has reached the server's
/// WAL on disk before DHCP ACKs what it holds.
async fn open_postgres(url: &str, password_file: Option<&Path>) -> Result<(Pool, Pool), StoreError> {
    let mut options = PgConnectOptions::from_str(url)?
        .application_name("ramboot")
        .options([("lock_timeout", format!("{}ms", WRITE_WAIT.as_millis()))]);
    if let Some(path) = password_file {
        options = options.password(&read_password_file(path)?);
    }
    let unreachable = |source| StoreError::Connect { target: describe(&options), source };
    let pool = pool_options(8).connect_with(options.clone()).await.map_err(unreachable)?;
    check_not_newer(applied_migration(&pool).await?, true)?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    let dhcp_writer = pool_options(1).connect_lazy_with(options);
    Ok((Pool::Postgres(pool), Pool::Postgres(dhcp_writer)))
}

/// "database D as user U on host:port" (or "on socket DIR"): which server a
/// connection error is about, without the password.
fn describe(options: &PgConnectOptions) -> String {
    let user = options.get_username();
    let db = options.get_database().unwrap_or(user);
    let at = match options.get_socket() {
        Some(dir) => format!("socket {}", dir.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!("PostgreSQL database {db:?} as user {user:?} on {at}")
}

/// The first line of `path`, refused if anyone but this user could read it
/// ([`crate::secrets::check`]'s rule, checked on the opened file) or if it is empty.
fn read_password_file(path: &Path) -> Result<String, StoreError> {
    use crate::secrets::SecretsError;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let refused = |source| StoreError::PasswordFile(SecretsError::Io { path: path.into(), source });
    let file = std::fs::File::open(path).map_err(refused)?;
    let meta = file.metadata().map_err(refused)?;
    crate::secrets::check(path, meta.mode(), meta.uid(), nix::unistd::geteuid().as_raw())
        .map_err(StoreError::PasswordFile)?;
    let mut text = String::new();
    // A password is one short line; more than this is not one.
    file.take(4096).read_to_string(&mut text).map_err(refused)?;
    match text.lines().next() {
        Some(password) if !password.is_empty() => Ok(password.to_string()),
        _ => Err(refused(std::io::Error::new(std::io::ErrorKind::InvalidData, "no password on its first line"))),
    }
}

/// The database file is node state (and boot token hashes, CHAP secrets): 0600,
/// created so before SQLite opens it, and its -wal/-shm with it.
fn restrict_database_files(options: &SqliteConnectOptions) -> Result<(), StoreError> {
    let db = options.get_filename();
    let name = db.to_string_lossy();
    // In-memory databases (sqlx names them `file:sqlx-in-memory-N`) have no file.
    if name.is_empty() || name == ":memory:" || name.starts_with("file:") {
        return Ok(());
    }
    let io = |e: std::io::Error| StoreError::Db(sqlx::Error::Io(e));
    if !db.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        // An empty file is a valid new database to SQLite.
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(db).map_err(io)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        crate::files::restrict_file(std::path::Path::new(&path)).map_err(io)?;
    }
    Ok(())
}

/// An enum stored as its name: node state, lease state, event kind.
pub(crate) trait Named: Copy + std::str::FromStr<Err: std::error::Error + Send + Sync + 'static> {
    fn name(self) -> &'static str;
}

impl Named for NodeState {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Named for LeaseState {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Named for EventKind {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

/// Columns holding one of a closed set of names are bound and read as the enum
/// through its text form (`Text(state)`), so a bad name is a decode error in one
/// place rather than a string checked by every caller. Generic over the database:
/// any back-end whose `str` is a text type gets them too. (A local wrapper, because
/// `NodeState` belongs to `ramboot-core`, which knows no database.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Text<T>(pub T);

impl<T: Named, DB: sqlx::Database> sqlx::Type<DB> for Text<T>
where
    str: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as sqlx::Type<DB>>::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'q, T: Named, DB: sqlx::Database> sqlx::Encode<'q, DB> for Text<T>
where
    &'q str: sqlx::Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        let text: &'q str = self.0.name();
        text.encode_by_ref(buf)
    }
}

impl<'r, T: Named, DB: sqlx::Database> sqlx::Decode<'r, DB> for Text<T>
where
    &'r str: sqlx::Decode<'r, DB>,
{
    fn decode(value: <DB as sqlx::Database>::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Text(<&'r str as sqlx::Decode<'r, DB>>::decode(value)?.parse()?))
    }
}

impl<T: Named> rusqlite::ToSql for Text<T> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(self.0.name().as_bytes())))
    }
}

impl<T: Named> rusqlite::types::FromSql for Text<T> {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        value.as_str()?.parse().map(Text).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

/// A name that is none of an enum's names.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// `Display` (padded, so `{:<8}` lines up as a `String` did) and `FromStr` for the
/// store's own enums, from their `ALL` and `as_str`. (`NodeState` has its own in
/// `ramboot_core::node`.)
macro_rules! text_enum {
    ($($ty:ty: $what:literal),+) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName { what: $what, name: s.into() })
            }
        }
    )+};
}

text_enum!(LeaseState: "lease state", EventKind: "event kind");

#[cfg(test)]
pub(crate) mod testing {
    use super::{LeaseOp, Store};
    use ramboot_core::node::MacAddr;
    use std::net::Ipv4Addr;

    pub const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    /// What keeps a test's database alive: its directory, or its PostgreSQL database.
    pub struct Guard {
        _dir: Option<tempfile::TempDir>,
        _db: Option<super::testdb::TestDb>,
    }

    impl Guard {
        /// The PostgreSQL database's URL (a second server may open it), if any.
        pub fn url(&self) -> Option<&str> {
            self._db.as_ref().map(|db| db.url())
        }
    }

    /// A fresh store: a database of its own on the PostgreSQL server
    /// `RAMBOOT_TEST_POSTGRES` names, else SQLite in a temporary directory.
    pub async fn store() -> (Store, Guard) {
        match super::testdb::TestDb::postgres() {
            Some(db) => (Store::open(db.url()).await.unwrap(), Guard { _dir: None, _db: Some(db) }),
            None => {
                let (store, dir) = sqlite_store().await;
                (store, Guard { _dir: Some(dir), _db: None })
            }
        }
    }

    /// A fresh SQLite store in a temporary directory, whatever the environment says.
    pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (Store::open(&url).await.unwrap(), dir)
    }

    /// This process's CPU seconds so far, every thread's (clock ticks): for the
    /// ignored measurements (`leases::commit_cpu`, `group::measure`).
    pub fn process_cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
    }

    /// The operator tests make their changes as.
    pub fn op() -> super::Actor {
        super::Actor::Token { name: "test-operator".into() }
    }

    /// A boot token bound to loopback.
    pub fn token(hash: &str) -> super::BootStart<'_> {
        super::BootStart { hash, bound_ip: std::net::IpAddr::from([127, 0, 0, 1]), stage1: None, served: "iPXE script" }
    }

    pub fn grant(mac: MacAddr, ip: [u8; 4], expires_at: u64, netboot: bool) -> LeaseOp {
        LeaseOp::Grant {
            mac,
            ip: Ipv4Addr::from(ip),
            expires_at,
            netboot,
            known: false,
            arch: Some("bios".into()),
            uuid: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::{Debug, Display};

    #[tokio::test]
    async fn a_database_a_newer_ramboot_migrated_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        assert_eq!(Store::schema(&url, None).await.unwrap(), Schema::NotCreated);
        let store = Store::open(&url).await.unwrap();
        let latest = latest_migration(false);
        assert_eq!(Store::schema(&url, None).await.unwrap(), Schema::At { at: latest, latest });
        // A newer ramboot's migration.
        store
            .backend
            .sql(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                 VALUES ($1, 'from the future', TRUE, x'00', 0)",
            )
            .bind(latest + 1)
            .execute()
            .await
            .unwrap();
        store.close().await;
        assert_eq!(Store::schema(&url, None).await.unwrap(), Schema::At { at: latest + 1, latest });
        let refused = Store::open(&url).await.err().expect("refused");
        assert!(matches!(refused, StoreError::NewerSchema { at, .. } if at == latest + 1), "{refused}");
        assert!(refused.to_string().contains("newer than this ramboot knows"), "{refused}");
    }

    #[tokio::test]
    async fn an_older_database_is_backed_up_before_it_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let url = format!("sqlite://{}", db.display());
        // A database an older ramboot made: every migration but the last.
        let older = dir.path().join("older-migrations");
        std::fs::create_dir_all(&older).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.pop();
        for f in &files {
            std::fs::copy(f, older.join(f.file_name().unwrap())).unwrap();
        }
        {
            let options = SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true);
            let pool: sqlx::SqlitePool = pool_options(1).connect_with(options).await.unwrap();
            sqlx::migrate::Migrator::new(older.as_path()).await.unwrap().run(&pool).await.unwrap();
            sqlx::query("CREATE TABLE marker (v TEXT); INSERT INTO marker VALUES ('before')")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let latest = latest_migration(false);
        assert_eq!(Store::schema(&url, None).await.unwrap(), Schema::At { at: latest - 1, latest });
        let store = Store::open(&url).await.unwrap();
        store.close().await;
        let backup = backup_path(&db, latest - 1);
        assert!(backup.is_file(), "no backup at {}", backup.display());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o077, 0, "private like the database");
        let backup_url = format!("sqlite://{}", backup.display());
        assert_eq!(Store::schema(&backup_url, None).await.unwrap(), Schema::At { at: latest - 1, latest });
        assert_eq!(Store::schema(&url, None).await.unwrap(), Schema::At { at: latest, latest });
        // A later start (nothing to migrate) makes no other copy.
        Store::open(&url).await.unwrap().close().await;
        let copies = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".schema-"));
        assert_eq!(copies.count(), 1);
    }

    /// Every value goes into the database and back as itself, and its JSON is its text form.
    async fn round_trip<T>(db: &Backend, all: &[T])
    where
        T: Named + PartialEq + Debug + Display + serde::Serialize + Send + Sync + Unpin + 'static,
        <T as FromStr>::Err: Debug,
    {
        for &value in all {
            let row = db.sql("SELECT $1 AS v").bind(Text(value)).fetch_one().await.unwrap();
            let Text(back): Text<T> = row.try_get("v").unwrap();
            assert_eq!(back, value);
            assert_eq!(value.to_string().parse::<T>().unwrap(), value);
            assert_eq!(serde_json::to_value(value).unwrap(), value.to_string());
        }
        let bogus = db.sql("SELECT 'bogus' AS v").fetch_one().await.unwrap().try_get::<Text<T>>("v");
        assert!(bogus.is_err(), "an unknown name is a decode error");
    }

    #[tokio::test]
    async fn enum_columns_round_trip_through_their_text() {
        let (s, _d) = testing::store().await;
        round_trip(&s.backend, &NodeState::ALL).await;
        round_trip(&s.backend, &LeaseState::ALL).await;
        round_trip(&s.backend, &EventKind::ALL).await;
        assert_eq!(format!("{:<8}|", EventKind::Dhcp), "dhcp    |", "padded as the CLI's table wants");
    }
}

#[cfg(test)]
mod file_mode_tests {
    use super::testing::{sqlite_store as store, MAC};
    use super::Store;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_database_and_its_wal_files_are_private() {
        let (s, dir) = store().await;
        s.ensure_node(MAC, 1000).await.unwrap();
        for name in ["t.db", "t.db-wal", "t.db-shm"] {
            let path = dir.path().join(name);
            assert!(path.exists(), "{name}");
            assert_eq!(mode(&path), 0o600, "{name}");
        }
        s.close().await;
        // A database an older version left world-readable is tightened on open.
        let db = dir.path().join("t.db");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Store::open(&format!("sqlite://{}", db.display())).await.unwrap();
        assert_eq!(mode(&db), 0o600);
        s.close().await;
    }
}

#[cfg(test)]
mod backend_tests {
    use super::testdb::{with_database, TestDb};
    use super::testing::{grant, op, store, MAC};
    use super::{Store, StoreError, WriteRefused};

    #[tokio::test]
    async fn concurrent_write_transactions_take_turns() {
        // Each checks that the MAC is new, then inserts it: only one may see it new.
        let (s, _d) = store().await;
        let tries = (0..6).map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.create_node(MAC, None, None, &Default::default(), &op(), 1).await })
        });
        let mut created = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(_) => created += 1,
                Err(e) => assert!(matches!(e, StoreError::DuplicateMac(_)), "{e}"),
            }
        }
        assert_eq!(created, 1);
    }

    #[test]
    fn a_test_database_replaces_the_url_path_and_keeps_the_query() {
        let w = with_database;
        assert_eq!(w("postgres:///?host=/run/pg&user=t", "d"), "postgres:///d?host=/run/pg&user=t");
        assert_eq!(w("postgres://u@h:5433/postgres", "d"), "postgres://u@h:5433/d");
        assert_eq!(w("postgresql://h", "d"), "postgresql://h/d");
    }

    /// A PostgreSQL database of this test's own, or `None` (and a note) without a server.
    fn postgres() -> Option<TestDb> {
        let db = TestDb::postgres();
        if db.is_none() {
            eprintln!("skipped: {} names no PostgreSQL server", super::testdb::ENV);
        }
        db
    }

    #[tokio::test]
    async fn a_write_postgres_refuses_is_unwritable_and_saves_nothing() {
        let Some(db) = postgres() else { return };
        let s = Store::open(db.url()).await.unwrap();
        s.ensure_node(MAC, 1).await.unwrap();
        // New sessions (DHCP's writer has not connected yet) become read-only, as on a standby.
        s.backend
            .sql(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', \
                 current_database()); END $$",
            )
            .execute()
            .await
            .unwrap();
        let other = ramboot_core::node::MacAddr([2, 0, 0, 0, 0, 2]);
        let err =
            s.commit_dhcp(&[grant(MAC, [10, 0, 0, 5], 500, true), grant(other, [10, 0, 0, 6], 500, true)], 2).await;
        let err = err.unwrap_err();
        assert!(matches!(err, StoreError::Unwritable { reason: WriteRefused::ReadOnly, .. }), "{err:?}");
        assert!(err.to_string().starts_with("database write refused: database is read-only"), "{err}");
        // Reads go on; nothing of the batch is there.
        assert!(s.leases().await.unwrap().is_empty());
        assert!(s.node_by_mac(other).await.unwrap().is_none());
        s.close().await;
    }

    #[tokio::test]
    async fn the_password_file_must_be_private_and_errors_name_the_database_not_the_password() {
        use std::os::unix::fs::PermissionsExt;
        let Some(db) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "not-the-password-xyzzy\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Store::connect(db.url(), Some(&file)).await.err().unwrap();
        assert!(matches!(err, StoreError::PasswordFile(_)), "{err}");
        assert!(err.to_string().contains("mode 640"), "{err}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = db.url().replace("/rt_", "/no_such_");
        let err = Store::connect(&url, Some(&file)).await.err().unwrap().to_string();
        assert!(err.starts_with("cannot connect to PostgreSQL database \"no_such_"), "{err}");
        assert!(err.contains("ramboot_test") || err.contains("as user"), "{err}");
        assert!(!err.contains("xyzzy"), "{err}");

        // The right password from the file (this server's, if the test has one).
        if let Ok(password) = std::env::var("PGPASSWORD") {
            std::fs::write(&file, format!("{password}\n")).unwrap();
            let s = Store::connect(db.url(), Some(&file)).await.unwrap();
            s.close().await;
        }
    }
}
