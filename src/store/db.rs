//! The seam between the table modules and the two databases: every statement is
//! written once, with `$1, $2…` placeholders (sqlx's SQLite driver binds `$N` by
//! number, as PostgreSQL does) and SQL both dialects speak, and runs on either.
//!
//! How one text serves both: a statement is built on an executor of one back-end
//! ([`Backend::sql`] for the pool, [`Tx::sql`] in a transaction), so it carries
//! that back-end's native `sqlx::query` and can never meet the other one. Binding
//! and reading are checked against *every* driver at compile time ([`Param`],
//! [`Column`]), and rows come back as one [`Row`] type. The table modules are
//! thus ordinary, monomorphic code with no back-end in sight, and the only
//! per-back-end `match`es are the few lines in this file.
//!
//! A third executor runs the same statements on a SQLite file synchronously
//! ([`Tx::sync`], rusqlite over the SQLite library sqlx links): DHCP's lease
//! committer uses it from a thread of its own, since sqlx's SQLite driver hands
//! every statement to a driver thread and back (see `dhcp::io`).
//!
//! Why not the alternatives: functions generic over `sqlx::Database` must restate
//! higher-ranked executor bounds (`for<'c> &'c mut DB::Connection: Executor<'c>`)
//! and an `Encode + Type` bound per bound type on every function, since Rust does
//! not imply them; a macro expanding each method once per back-end would compile
//! ~80 bodies twice; `sqlx::Any` gives up the SQLite connect options (WAL,
//! synchronous FULL, the release hook) and the native error types.
//!
//! What the dialects do differently lives here too, and only here: how a write
//! transaction takes the write lock ([`Backend::begin_write`]), the label filter's
//! JSON syntax ([`Backend::label_equals`]), how a JSON array parameter becomes rows
//! ([`Tx::json_rows`]), and which error codes mean "the database will not take
//! writes" ([`write_refused`]).

use super::changes::Changes;
use super::WriteRefused;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection, SqlitePool, SqliteRow};

/// The database behind the facade (see "Store" in docs/architecture.md), and
/// who in this process hears what its commits changed.
#[derive(Clone)]
pub(super) struct Backend {
    pub pool: Pool,
    pub changes: std::sync::Arc<Changes>,
    /// The open group of write transactions ([`Backend::begin_write`]).
    pub groups: super::group::Groups,
    /// A SQLite database's file and its queue for the write lock
    /// ([`sync::SqliteFile`]), shared by the store's back-ends.
    pub sqlite: Option<sync::SqliteFile>,
}

#[derive(Clone)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A value a statement binds: one every driver can encode.
pub(super) trait Param<'q>:
    'q
    + sqlx::Encode<'q, Sqlite>
    + sqlx::Type<Sqlite>
    + sqlx::Encode<'q, Postgres>
    + sqlx::Type<Postgres>
    + rusqlite::ToSql
    + Send
{
}

impl<'q, T> Param<'q> for T where
    T: 'q
        + sqlx::Encode<'q, Sqlite>
        + sqlx::Type<Sqlite>
        + sqlx::Encode<'q, Postgres>
        + sqlx::Type<Postgres>
        + rusqlite::ToSql
        + Send
{
}

/// A column type every driver can decode.
pub(super) trait Column:
    for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
    + rusqlite::types::FromSql
{
}

impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + rusqlite::types::FromSql
{
}

/// A result row of any driver.
pub(super) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
    /// From the synchronous SQLite connection ([`Tx::sync`]): the values, read out
    /// of the statement, and the statement's column names.
    Sync(std::sync::Arc<[String]>, Vec<rusqlite::types::Value>),
}

impl Row {
    pub fn try_get<T: Column>(&self, column: &str) -> Result<T, sqlx::Error> {
        use sqlx::Row as _;
        match self {
            Row::Sqlite(row) => row.try_get(column),
            Row::Postgres(row) => row.try_get(column),
            Row::Sync(names, values) => {
                let index = names.iter().position(|n| n == column);
                let value =
                    index.and_then(|i| values.get(i)).ok_or_else(|| sqlx::Error::ColumnNotFound(column.into()))?;
                T::column_result(value.into())
                    .map_err(|e| sqlx::Error::ColumnDecode { index: column.into(), source: Box::new(e) })
            }
        }
    }
}

impl From<SqliteRow> for Row {
    fn from(row: SqliteRow) -> Row {
        Row::Sqlite(row)
    }
}

impl From<PgRow> for Row {
    fn from(row: PgRow) -> Row {
        Row::Postgres(row)
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// A statement and the executor it runs on (a pool, or a transaction's connection),
/// of the same back-end by construction.
#[must_use = "a statement does nothing until it is executed or fetched"]
pub(super) enum Stmt<'c, 'q> {
    SqlitePool(&'c SqlitePool, SqliteQuery<'q>),
    Sqlite(&'c mut SqliteConnection, SqliteQuery<'q>),
    PgPool(&'c PgPool, PgQuery<'q>),
    Postgres(&'c mut PgConnection, PgQuery<'q>),
    /// On the synchronous SQLite connection: runs on the caller's thread when
    /// awaited (the future is ready at once).
    Sync(&'c mut rusqlite::Connection, &'q str, Vec<Box<dyn rusqlite::ToSql + Send + 'q>>),
}

/// Run `$body` with `$e` (executor) and `$q` (query) bound, whatever sqlx variant,
/// or `$sync` for the synchronous connection: the same text for each sqlx arm, so
/// every arm is the same code against its own driver.
macro_rules! run {
    ($stmt:expr, |$e:ident, $q:ident| $body:expr, $sync:expr) => {
        match $stmt {
            Stmt::SqlitePool($e, $q) => $body,
            Stmt::Sqlite($e, $q) => $body,
            Stmt::PgPool($e, $q) => $body,
            Stmt::Postgres($e, $q) => $body,
            Stmt::Sync(conn, sql, params) => $sync(conn, sql, params)?,
        }
    };
}

impl<'q> Stmt<'_, 'q> {
    pub fn bind<T: Param<'q>>(self, value: T) -> Self {
        match self {
            Stmt::SqlitePool(e, q) => Stmt::SqlitePool(e, q.bind(value)),
            Stmt::Sqlite(e, q) => Stmt::Sqlite(e, q.bind(value)),
            Stmt::PgPool(e, q) => Stmt::PgPool(e, q.bind(value)),
            Stmt::Postgres(e, q) => Stmt::Postgres(e, q.bind(value)),
            Stmt::Sync(conn, sql, mut params) => {
                params.push(Box::new(value));
                Stmt::Sync(conn, sql, params)
            }
        }
    }

    /// Run it; how many rows it changed.
    pub async fn execute(self) -> Result<u64, sqlx::Error> {
        Ok(run!(self, |e, q| q.execute(e).await?.rows_affected(), sync::execute))
    }

    pub async fn fetch_optional(self) -> Result<Option<Row>, sqlx::Error> {
        Ok(run!(self, |e, q| q.fetch_optional(e).await?.map(Row::from), |c, s, p| sync::fetch(c, s, p, Some(1))
            .map(|rows| rows.into_iter().next())))
    }

    pub async fn fetch_one(self) -> Result<Row, sqlx::Error> {
        Ok(run!(self, |e, q| q.fetch_one(e).await?.into(), |c, s, p| sync::fetch(c, s, p, Some(1))
            .and_then(|rows| rows.into_iter().next().ok_or(sqlx::Error::RowNotFound))))
    }

    pub async fn fetch_all(self) -> Result<Vec<Row>, sqlx::Error> {
        Ok(run!(self, |e, q| q.fetch_all(e).await?.into_iter().map(Row::from).collect(), |c, s, p| sync::fetch(
            c, s, p, None
        )))
    }
}

/// The synchronous SQLite connection's side of [`Stmt`] (rusqlite, on the same
/// SQLite library sqlx links): DHCP's lease committer runs a whole batch on a
/// thread of its own with it, with no hand-off to a driver thread per statement.
pub(super) mod sync {
    use super::Row;
    use rusqlite::ToSql;

    type Params<'q> = Vec<Box<dyn ToSql + Send + 'q>>;

    /// A SQLite database file, and this process's queue for its one write lock:
    /// every write transaction of the process (DHCP's lease committers, the group
    /// of writers, the few writes of their own) takes its turn here in arrival
    /// order, with the lock to itself, instead of polling SQLite's busy handler,
    /// whose sleeps grow to 100 ms and favour whoever asks again first.
    #[derive(Clone)]
    pub struct SqliteFile {
        pub path: std::path::PathBuf,
        pub turns: Turns,
    }

    /// See [`SqliteFile`].
    pub type Turns = std::sync::Arc<tokio::sync::Mutex<()>>;

    impl SqliteFile {
        pub fn new(path: std::path::PathBuf) -> SqliteFile {
            SqliteFile { path, turns: Default::default() }
        }
    }

    /// One writer's turn at the write lock ([`SqliteFile::turns`]).
    pub type Turn = tokio::sync::OwnedMutexGuard<()>;

    /// Wait for this process's turn at the write lock, at most as long as SQLite's
    /// busy timeout; past it the write is refused as busy, as SQLite would refuse it.
    pub async fn take_turn(turns: &Turns) -> Result<Turn, sqlx::Error> {
        let wait = crate::store::WRITE_WAIT;
        tokio::time::timeout(wait, turns.clone().lock_owned()).await.map_err(|_| {
            let message = format!("waited {} s for this process's other writers", wait.as_secs());
            let code = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY);
            sqlx::Error::Database(Box::new(SyncSqliteError { code, message: Some(message) }))
        })
    }

    /// The connection a [`Transaction`] runs on: DHCP's committer lends its own;
    /// the group of writers (`store::group`) hands its connection over for the
    /// transaction's life and takes it back at the commit.
    pub enum Conn<'a> {
        Borrowed(&'a mut rusqlite::Connection),
        Owned(rusqlite::Connection),
    }

    impl Conn<'_> {
        fn get(&mut self) -> &mut rusqlite::Connection {
            match self {
                Conn::Borrowed(conn) => conn,
                Conn::Owned(conn) => conn,
            }
        }

        pub fn into_owned(self) -> Option<rusqlite::Connection> {
            match self {
                Conn::Owned(conn) => Some(conn),
                Conn::Borrowed(_) => None,
            }
        }
    }

    /// A write transaction that can be held across `.await`s (rusqlite's own
    /// `Transaction` borrows the connection shared, and a shared `Connection`
    /// cannot move between threads). Rolled back if dropped uncommitted.
    pub struct Transaction<'a> {
        /// `None` only once committed.
        conn: Option<Conn<'a>>,
    }

    impl<'a> Transaction<'a> {
        /// `BEGIN IMMEDIATE`: waits (blocking) up to the busy timeout for a writer
        /// of another process (those of this one wait their turn first).
        pub fn begin(mut conn: Conn<'a>) -> Result<Transaction<'a>, sqlx::Error> {
            conn.get().execute_batch("BEGIN IMMEDIATE").map_err(error)?;
            Ok(Transaction { conn: Some(conn) })
        }

        pub fn conn(&mut self) -> &mut rusqlite::Connection {
            self.conn.as_mut().expect("open until committed").get()
        }

        /// `COMMIT` (blocking: the fsync), and the connection back out of any
        /// transaction, or `None` if it cannot be made so.
        pub fn commit(mut self) -> (Result<(), sqlx::Error>, Option<Conn<'a>>) {
            let mut conn = self.conn.take().expect("open until committed");
            let committed = conn.get().execute_batch("COMMIT").map_err(error);
            // A COMMIT that fails (disk full) leaves SQLite's own rollback, or none.
            let idle = conn.get().is_autocommit() || conn.get().execute_batch("ROLLBACK").is_ok();
            (committed, idle.then_some(conn))
        }
    }

    impl Drop for Transaction<'_> {
        fn drop(&mut self) {
            if let Some(conn) = self.conn.as_mut().map(Conn::get) {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
            }
        }
    }

    /// A connection of its own to the SQLite database at `file`, set as the
    /// pool's connections are (see `open_sqlite`): durable commits, the same wait
    /// for another writer.
    pub fn open(file: &std::path::Path) -> Result<rusqlite::Connection, sqlx::Error> {
        let open = || -> rusqlite::Result<rusqlite::Connection> {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = rusqlite::Connection::open_with_flags(file, flags)?;
            conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
            conn.busy_timeout(crate::store::WRITE_WAIT)?;
            // Every statement text of the store's writers stays prepared.
            conn.set_prepared_statement_cache_capacity(256);
            Ok(conn)
        };
        open().map_err(error)
    }

    /// The prepared (cached) statement with `params` bound by number (`$1` is the
    /// first), as sqlx's SQLite driver binds them.
    fn prepare<'c>(
        conn: &'c rusqlite::Connection,
        sql: &str,
        params: &Params<'_>,
    ) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
        let mut stmt = conn.prepare_cached(sql)?;
        for (i, value) in params.iter().enumerate() {
            if let Some(index) = stmt.parameter_index(&format!("${}", i + 1))? {
                stmt.raw_bind_parameter(index, value)?;
            }
        }
        Ok(stmt)
    }

    pub fn execute(conn: &rusqlite::Connection, sql: &str, params: Params<'_>) -> Result<u64, sqlx::Error> {
        let run = || {
            let mut stmt = prepare(conn, sql, &params)?;
            // Stepped through, so a statement that also returns rows runs whole.
            let mut rows = stmt.raw_query();
            while rows.next()?.is_some() {}
            Ok(conn.changes())
        };
        run().map_err(error)
    }

    pub fn fetch(
        conn: &rusqlite::Connection,
        sql: &str,
        params: Params<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let run = || {
            let mut stmt = prepare(conn, sql, &params)?;
            let names: std::sync::Arc<[String]> = stmt.column_names().into_iter().map(String::from).collect();
            let count = names.len();
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let values = (0..count).map(|i| row.get_ref(i).map(rusqlite::types::Value::from));
                out.push(Row::Sync(names.clone(), values.collect::<rusqlite::Result<_>>()?));
                if limit.is_some_and(|n| out.len() >= n) {
                    break;
                }
            }
            Ok(out)
        };
        run().map_err(error)
    }

    /// A rusqlite error as the sqlx error the rest of the store handles: SQLite's
    /// own failures keep their result code (see [`super::write_refused`]).
    pub fn error(e: rusqlite::Error) -> sqlx::Error {
        match e {
            rusqlite::Error::SqliteFailure(code, message) => {
                sqlx::Error::Database(Box::new(SyncSqliteError { code, message }))
            }
            other => sqlx::Error::Protocol(format!("sqlite: {other}")),
        }
    }

    /// A failure SQLite reported to the synchronous connection.
    #[derive(Debug, thiserror::Error)]
    #[error("{}", message.as_deref().unwrap_or("SQLite error"))]
    pub struct SyncSqliteError {
        code: rusqlite::ffi::Error,
        message: Option<String>,
    }

    impl sqlx::error::DatabaseError for SyncSqliteError {
        fn message(&self) -> &str {
            self.message.as_deref().unwrap_or("SQLite error")
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.code.extended_code.to_string().into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            use rusqlite::ffi;
            match self.code.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    sqlx::error::ErrorKind::UniqueViolation
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlx::error::ErrorKind::ForeignKeyViolation,
                ffi::SQLITE_CONSTRAINT_NOTNULL => sqlx::error::ErrorKind::NotNullViolation,
                ffi::SQLITE_CONSTRAINT_CHECK => sqlx::error::ErrorKind::CheckViolation,
                _ => sqlx::error::ErrorKind::Other,
            }
        }
    }
}

/// Somewhere to run a statement: a transaction of its own, or a grouped writer's.
pub(super) trait Sql {
    fn sql<'q>(&mut self, sql: &'q str) -> Stmt<'_, 'q>;
    /// An event row was written: event watchers wake once it is committed.
    fn wrote_events(&mut self);
}

impl<'a> Sql for Tx<'a> {
    fn sql<'q>(&mut self, sql: &'q str) -> Stmt<'_, 'q> {
        Tx::sql(self, sql)
    }

    fn wrote_events(&mut self) {
        self.wrote_events = true;
    }
}

/// A write transaction of either back-end.
pub(super) struct Tx<'a> {
    conn: TxConn<'a>,
    changes: std::sync::Arc<Changes>,
    wrote_events: bool,
    /// A SQLite write transaction's turn ([`sync::SqliteFile`]), released once the
    /// transaction has ended (declared after `conn`, so dropped after its rollback).
    _turn: Option<sync::Turn>,
}

enum TxConn<'a> {
    Sqlite(sqlx::Transaction<'a, Sqlite>),
    Postgres(sqlx::Transaction<'a, Postgres>),
    Sync(sync::Transaction<'a>),
}

impl<'a> Tx<'a> {
    /// A write transaction (`BEGIN IMMEDIATE`) on a synchronous SQLite connection,
    /// in the caller's `turn`: its statements run on the calling thread. An owned
    /// connection stays with the transaction until [`Tx::finish`] hands it back.
    pub fn sync(
        conn: sync::Conn<'a>,
        turn: sync::Turn,
        changes: std::sync::Arc<Changes>,
    ) -> Result<Tx<'a>, sqlx::Error> {
        let tx = sync::Transaction::begin(conn)?;
        Ok(Tx { conn: TxConn::Sync(tx), changes, wrote_events: false, _turn: Some(turn) })
    }
}

impl Tx<'_> {
    pub fn sql<'q>(&mut self, sql: &'q str) -> Stmt<'_, 'q> {
        match &mut self.conn {
            TxConn::Sqlite(tx) => Stmt::Sqlite(tx, sqlx::query(sql)),
            TxConn::Postgres(tx) => Stmt::Postgres(tx, sqlx::query(sql)),
            TxConn::Sync(tx) => Stmt::Sync(tx.conn(), sql, Vec::new()),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, TxConn::Postgres(_))
    }

    /// A subquery over the JSON array bound as `$param`: one row per element (an
    /// array with a value per column), in array order, with `columns` named and
    /// typed as given. A batch of any size is one statement of one shape, prepared
    /// once, and one round trip to the database (the DHCP lease commit's).
    pub fn json_rows(&self, param: usize, columns: &[JsonColumn]) -> String {
        let postgres = self.is_postgres();
        let select: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, column)| match column {
                // SQLite's `->>` gives a JSON number back as an integer already.
                JsonColumn::Int(name) if postgres => format!("(value ->> {i})::bigint AS {name}"),
                JsonColumn::Text(name) | JsonColumn::Int(name) => format!("value ->> {i} AS {name}"),
            })
            .collect();
        let select = select.join(", ");
        if postgres {
            format!(
                "SELECT {select} FROM jsonb_array_elements(${param}::jsonb) WITH ORDINALITY AS element(value, n) ORDER BY n"
            )
        } else {
            format!("SELECT {select} FROM json_each(${param}) ORDER BY key")
        }
    }

    /// A subquery over the JSON array of strings bound as `$param`: one text per row.
    pub fn json_texts(&self, param: usize) -> String {
        if self.is_postgres() {
            format!("SELECT jsonb_array_elements_text(${param}::jsonb)")
        } else {
            format!("SELECT value FROM json_each(${param})")
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.finish().await.0
    }

    /// Commit, and hand back the owned connection of a [`Tx::sync`] transaction
    /// if it can be used again. A synchronous transaction commits (and fsyncs) on
    /// the calling thread.
    pub async fn finish(self) -> (Result<(), sqlx::Error>, Option<rusqlite::Connection>) {
        let (committed, conn) = match self.conn {
            TxConn::Sqlite(tx) => (tx.commit().await, None),
            TxConn::Postgres(tx) => return (tx.commit().await, None),
            TxConn::Sync(tx) => {
                let (committed, conn) = tx.commit();
                (committed, conn.and_then(sync::Conn::into_owned))
            }
        };
        if committed.is_ok() && self.wrote_events {
            self.changes.events_changed();
        }
        (committed, conn)
    }

    /// Whether this is a synchronous SQLite transaction, whose statements and
    /// commit run on the calling thread.
    pub fn is_sync(&self) -> bool {
        matches!(self.conn, TxConn::Sync(_))
    }
}

/// The advisory lock every PostgreSQL write transaction takes first (an arbitrary
/// constant: "ramboot" in ASCII), see [`Backend::begin_write`].
const PG_WRITE_LOCK: i64 = 0x72_61_6d_62_6f_6f_74;

/// One row-group a lease commit locks on PostgreSQL (see
/// [`Backend::begin_lease_write`]): an address, or a MAC. PostgreSQL's two-key
/// advisory locks live apart from the one-key [`PG_WRITE_LOCK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct LockKey {
    class: i32,
    id: i32,
}

impl LockKey {
    pub fn address(ip: std::net::Ipv4Addr) -> LockKey {
        LockKey { class: 1, id: u32::from(ip) as i32 }
    }

    /// An IPv6 address, its 128 bits folded to 32 (two addresses may share a key:
    /// they then only wait for each other).
    pub fn address6(addr: std::net::Ipv6Addr) -> LockKey {
        let bits = u128::from(addr);
        let folded = (bits ^ (bits >> 32) ^ (bits >> 64) ^ (bits >> 96)) as u32;
        LockKey { class: 3, id: folded as i32 }
    }

    /// Two MACs may share a key (a 48-bit MAC folded to 32 bits): they then only
    /// wait for each other.
    pub fn mac(mac: ramboot_core::node::MacAddr) -> LockKey {
        let [a, b, c, d, e, f] = mac.0;
        LockKey { class: 2, id: i32::from_be_bytes([a ^ e, b ^ f, c, d]) }
    }
}

impl Backend {
    pub fn sql<'q>(&self, sql: &'q str) -> Stmt<'_, 'q> {
        match &self.pool {
            Pool::Sqlite(pool) => Stmt::SqlitePool(pool, sqlx::query(sql)),
            Pool::Postgres(pool) => Stmt::PgPool(pool, sqlx::query(sql)),
        }
    }

    /// A transaction of its own that holds the database's write lock from its first statement,
    /// so what it reads stays true until it commits (read-then-write rules such as
    /// "not the last admin token" or "the next free LUN" rely on it).
    ///
    /// SQLite: `BEGIN IMMEDIATE`. PostgreSQL has no database-wide write lock, so a
    /// transaction-scoped advisory lock stands in for it: writers that go through
    /// here run one at a time, on this server or another on the same database, as
    /// they do on SQLite; single-statement writes outside one stay concurrent. The
    /// wait is bounded by the connection's `lock_timeout` (SQLite's busy timeout),
    /// past which the write is refused as busy.
    pub async fn begin_write_alone(&self) -> Result<Tx<'static>, super::StoreError> {
        let mut tx = self.begin().await?;
        if tx.is_postgres() {
            tx.sql("SELECT pg_advisory_xact_lock($1)").bind(PG_WRITE_LOCK).execute().await?;
        }
        Ok(tx)
    }

    /// A write transaction for DHCP's lease commits, which touch only the rows of
    /// the addresses and MACs in `keys`. SQLite: `BEGIN IMMEDIATE`, as any write.
    /// PostgreSQL: the write lock *shared* (lease commits exclude every other
    /// writer, as before, but not each other), then an exclusive advisory lock per
    /// key, taken in sorted order so two commits never deadlock. Lease commits of
    /// several servers on one database thus run side by side unless they touch the
    /// same address or MAC, and what each reads of its own rows stays true until it
    /// commits.
    pub async fn begin_lease_write(&self, keys: &[LockKey]) -> Result<Tx<'static>, super::StoreError> {
        let mut tx = self.begin().await?;
        if let TxConn::Postgres(conn) = &mut tx.conn {
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(PG_WRITE_LOCK).execute(&mut **conn).await?;
            let mut keys = keys.to_vec();
            keys.sort_unstable();
            keys.dedup();
            let (classes, ids): (Vec<i32>, Vec<i32>) = keys.iter().map(|k| (k.class, k.id)).unzip();
            // OFFSET 0 keeps the sorted subquery as it is: the locks are taken in
            // its order.
            sqlx::query(
                "SELECT count(pg_advisory_xact_lock(c, i)) FROM
                 (SELECT c, i FROM unnest($1::int4[], $2::int4[]) AS k(c, i) ORDER BY c, i OFFSET 0) AS sorted",
            )
            .bind(classes)
            .bind(ids)
            .execute(&mut **conn)
            .await?;
        }
        Ok(tx)
    }

    /// Send `payloads` on PostgreSQL's `channel` in one transaction of their own that
    /// does not wait for its commit record to reach disk (a notice is a hint, and
    /// its commit holds PostgreSQL's notify lock, which every notifying commit
    /// takes in turn). No-op on SQLite.
    pub async fn notify_unsynced(&self, channel: &str, payloads: &[String]) -> Result<(), sqlx::Error> {
        let Pool::Postgres(pool) = &self.pool else { return Ok(()) };
        let mut tx = pool.begin().await?;
        // One statement whatever the batch: three round trips (begin, this, commit).
        // The volatile CTE runs once, before the notices, and sets the setting for
        // this transaction's commit only.
        sqlx::query(
            "WITH unsynced AS (SELECT set_config('synchronous_commit', 'off', true))
             SELECT count(pg_notify($1, payload)) FROM unsynced, unnest($2::text[]) AS payload",
        )
        .bind(channel)
        .bind(payloads)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// A write transaction of either back-end (SQLite's takes the write lock at
    /// once, in its turn).
    async fn begin(&self) -> Result<Tx<'static>, super::StoreError> {
        let turn = match &self.sqlite {
            Some(file) => Some(sync::take_turn(&file.turns).await?),
            None => None,
        };
        let conn = match &self.pool {
            Pool::Sqlite(pool) => TxConn::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            // No connection to begin on is an unreachable database, whatever the
            // server said (refused, not accepting connections, shutting down).
            Pool::Postgres(pool) => TxConn::Postgres(
                pool.begin()
                    .await
                    .map_err(|source| super::StoreError::Unwritable { reason: WriteRefused::Unreachable, source })?,
            ),
        };
        Ok(Tx { conn, changes: self.changes.clone(), wrote_events: false, _turn: turn })
    }

    /// A read transaction that sees one snapshot of the whole database throughout.
    /// SQLite: a deferred transaction's snapshot is taken at its first read and kept
    /// (WAL) while writers go on. PostgreSQL: REPEATABLE READ gives one snapshot.
    pub async fn begin_snapshot(&self) -> Result<Tx<'static>, sqlx::Error> {
        let conn = match &self.pool {
            Pool::Sqlite(pool) => TxConn::Sqlite(pool.begin().await?),
            Pool::Postgres(pool) => {
                TxConn::Postgres(pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?)
            }
        };
        Ok(Tx { conn, changes: self.changes.clone(), wrote_events: false, _turn: None })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// A condition: the node's labels (a JSON object in a text column) map the key
    /// bound as `$key` to the value bound as `$value`.
    pub fn label_equals(&self, key: usize, value: usize) -> String {
        match self.pool {
            Pool::Sqlite(_) => format!("json_extract(labels, '$.' || json_quote(${key})) = ${value}"),
            Pool::Postgres(_) => format!("(labels::jsonb ->> ${key}) = ${value}"),
        }
    }

    pub async fn close(&self) {
        // Behind any writer or commit still holding the group.
        self.groups.lock().await.close().await;
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// A column of [`Tx::json_rows`]: its name, and whether it is read as text or as
/// a 64-bit integer.
#[derive(Debug, Clone, Copy)]
pub(super) enum JsonColumn {
    Text(&'static str),
    Int(&'static str),
}

/// `$n, $n+1, …` for `count` values from `*next`, which moves past them: the
/// numbered placeholders of a statement built from parts.
pub(super) fn placeholders(next: &mut usize, count: usize) -> String {
    let marks: Vec<String> = (*next..*next + count).map(|n| format!("${n}")).collect();
    *next += count;
    marks.join(", ")
}

// SQLite's primary result codes (the low byte of an extended code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;

/// Whether `e` says the database will not take writes now, and why. Each driver's
/// own codes: SQLite's result codes, PostgreSQL's SQLSTATEs.
pub(super) fn write_refused(e: &sqlx::Error) -> Option<WriteRefused> {
    if matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) {
        return Some(WriteRefused::Unreachable);
    }
    let db = e.as_database_error()?;
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return match pg.code() {
            code if code.starts_with("08") => Some(WriteRefused::Unreachable),
            "57P01" | "57P02" | "57P03" => Some(WriteRefused::Unreachable),
            "53100" => Some(WriteRefused::DiskFull),
            // A standby, or default_transaction_read_only.
            "25006" => Some(WriteRefused::ReadOnly),
            "58030" => Some(WriteRefused::Io),
            // Serialization failure, deadlock, lock_timeout: another writer won.
            "40001" | "40P01" | "55P03" => Some(WriteRefused::Busy),
            _ => None,
        };
    }
    let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        || db.try_downcast_ref::<sync::SyncSqliteError>().is_some();
    if !sqlite {
        return None;
    }
    match db.code()?.parse::<i64>().ok()? & 0xff {
        SQLITE_FULL => Some(WriteRefused::DiskFull),
        SQLITE_READONLY => Some(WriteRefused::ReadOnly),
        SQLITE_IOERR => Some(WriteRefused::Io),
        SQLITE_BUSY => Some(WriteRefused::Busy),
        _ => None,
    }
}
