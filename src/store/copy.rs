//! `ramboot db copy`: every table of one ramboot database copied into another,
//! SQLite or PostgreSQL in either direction, ids kept, so an installation can grow
//! from one machine's SQLite file to a PostgreSQL that several servers share.
//!
//! How: both ends are opened as a [`Store`] (so both are migrated to this build's
//! schema, and must then agree on it); the source is read in one snapshot (a read
//! transaction), keyset-paged by primary key; the target is written in one write
//! transaction (all or nothing) in multi-row INSERTs, its row counts checked
//! against the source's before it commits, and PostgreSQL's identity counters moved
//! past the copied ids. Column names and types come from each database's own
//! catalogue, so a new column needs nothing here; a new *table* must be added to
//! [`TABLES`] (in foreign-key order), and the copy refuses to run until it is.
//!
//! It writes nothing but the target's tables (and, through `Store::connect`, the
//! migrations of both ends), and holds no back-end code beyond the catalogue
//! queries and the snapshot: statements go through `db`.

use super::db::{placeholders, Backend, Row, Stmt, Tx};
use super::{is_postgres_url, Store, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Every table the migrations create, parents before children (foreign keys): rows
/// go into the target in this order and, with `--force`, out of it in reverse.
pub const TABLES: [&str; 11] = [
    "nodes",
    "boots",
    "events",
    "leases",
    "leases6",
    "api_tokens",
    "ui_sessions",
    "volumes",
    "audit",
    "rollouts",
    "rollout_events",
];

/// Tables of sqlx and of SQLite itself, not ramboot's (migrations are not copied:
/// each end keeps its own back-end's history).
fn internal(table: &str) -> bool {
    table == "_sqlx_migrations" || table.starts_with("sqlite_")
}

/// Rows per SELECT and per INSERT: few round trips, statements of a sane size.
const BATCH: usize = 500;

/// Values one statement may bind: SQLite's default `SQLITE_MAX_VARIABLE_NUMBER`
/// (32766 since 3.32; PostgreSQL allows 65535).
const MAX_PARAMS: usize = 32766;

/// Which end of the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl Side {
    /// Its command-line flag.
    fn flag(self) -> &'static str {
        match self {
            Side::Source => "from",
            Side::Target => "to",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("--{}: the URL holds a password; put it in --{}-password-file (mode 0600) or PGPASSWORD", .0.flag(), .0.flag())]
    PasswordInUrl(Side),
    #[error("--from: no database at {0}")]
    NoSource(PathBuf),
    #[error("--from and --to name the same database")]
    SameDatabase,
    /// The store's error, in the message (not as a `source`: its text already
    /// holds its own causes, which a chain would print again).
    #[error("{side} database: {error}")]
    Db { side: Side, error: StoreError },
    #[error(
        "the {side} database has migration {version}, which this ramboot does not know: \
         copy with the ramboot version that wrote it (or a newer one)"
    )]
    NewerSchema { side: Side, version: i64 },
    #[error("the databases are at different schema versions: source migrations {from:?}, target {to:?}")]
    SchemaMismatch { from: Vec<i64>, to: Vec<i64> },
    #[error("the {side} database has a table {table:?} that db copy does not know (see store::copy::TABLES)")]
    UnknownTable { side: Side, table: String },
    #[error("the {side} database has no table {table:?}")]
    MissingTable { side: Side, table: &'static str },
    #[error("table {table}: column {column:?} is only in the {side} database")]
    LoneColumn { table: &'static str, column: String, side: Side },
    #[error(
        "table {table}, column {column}: {from:?} in the source and {to:?} in the target, which db copy cannot carry"
    )]
    ColumnType { table: &'static str, column: String, from: String, to: String },
    #[error("table {table} has no single-column primary key in the source")]
    NoKey { table: &'static str },
    #[error("the target database is not empty ({}): pass --force to replace its rows", rows(.0))]
    TargetNotEmpty(Vec<(&'static str, u64)>),
    #[error(
        "table {table}: {copied} rows in the target after the copy, {expected} in the source; nothing was committed"
    )]
    CountMismatch { table: &'static str, copied: u64, expected: u64 },
}

/// "nodes: 1 row, events: 12 rows".
fn rows(counts: &[(&'static str, u64)]) -> String {
    let rows = |n: u64| if n == 1 { "1 row".to_string() } else { format!("{n} rows") };
    counts.iter().map(|&(table, n)| format!("{table}: {}", rows(n))).collect::<Vec<_>>().join(", ")
}

/// What a `db` call failed on: which end, as a store error (so a refused write
/// reads as one: "database write refused: disk full").
fn on<E: Into<StoreError>>(side: Side) -> impl Fn(E) -> CopyError {
    move |e| CopyError::Db { side, error: e.into() }
}

/// One end of a copy, as the operator named it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub url: &'a str,
    /// PostgreSQL's password (else `PGPASSWORD`, or none).
    pub password_file: Option<&'a Path>,
}

/// Whether a PostgreSQL URL carries a password, in its user info or its query: the
/// URL is shown and logged, so the password comes from a file or `PGPASSWORD`.
pub fn url_holds_password(url: &str) -> bool {
    if !is_postgres_url(url) {
        return false;
    }
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or("");
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || query.split('&').any(|pair| pair.split('=').next() == Some("password"))
}

/// Open both ends and [`copy`] `from` into `to`; rows per table, in [`TABLES`] order.
pub async fn run(
    from: Endpoint<'_>,
    to: Endpoint<'_>,
    force: bool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<(&'static str, u64)>, CopyError> {
    for (side, end) in [(Side::Source, from), (Side::Target, to)] {
        if url_holds_password(end.url) {
            return Err(CopyError::PasswordInUrl(side));
        }
    }
    // A mistyped SQLite source would otherwise be created empty, and copied (with
    // --force, over the target).
    let source_file = sqlite_file(from.url).map_err(on(Side::Source))?;
    if let Some(file) = &source_file {
        if !file.is_file() {
            return Err(CopyError::NoSource(file.clone()));
        }
    }
    let same = match (&source_file, sqlite_file(to.url).map_err(on(Side::Target))?) {
        (Some(a), Some(b)) => b.canonicalize().is_ok_and(|b| a.canonicalize().is_ok_and(|a| a == b)),
        _ => from.url == to.url,
    };
    if same {
        return Err(CopyError::SameDatabase);
    }
    let source = open(Side::Source, from).await?;
    let target = match open(Side::Target, to).await {
        Ok(target) => target,
        Err(e) => {
            source.close().await;
            return Err(e);
        }
    };
    let copied = copy(&source, &target, force, progress).await;
    source.close().await;
    target.close().await;
    copied
}

/// The file of a SQLite URL; `None` for PostgreSQL.
fn sqlite_file(url: &str) -> Result<Option<PathBuf>, sqlx::Error> {
    if is_postgres_url(url) {
        return Ok(None);
    }
    Ok(Some(sqlx::sqlite::SqliteConnectOptions::from_str(url)?.get_filename().to_path_buf()))
}

async fn open(side: Side, end: Endpoint<'_>) -> Result<Store, CopyError> {
    Store::connect(end.url, end.password_file).await.map_err(|e| match e {
        StoreError::Migrate(sqlx::migrate::MigrateError::VersionMissing(version))
        | StoreError::NewerSchema { at: version, .. } => CopyError::NewerSchema { side, version },
        error => CopyError::Db { side, error },
    })
}

/// Copy every row of `from` into `to`, which must be empty unless `force` (then its
/// rows are deleted first, in the same transaction). `progress(table, copied,
/// total)` is called as each table starts and after each batch. Rows per table, in
/// [`TABLES`] order.
pub async fn copy(
    from: &Store,
    to: &Store,
    force: bool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<(&'static str, u64)>, CopyError> {
    let (src, dst) = (&from.backend, &to.backend);
    let versions = (applied(src).await.map_err(on(Side::Source))?, applied(dst).await.map_err(on(Side::Target))?);
    if versions.0 != versions.1 {
        return Err(CopyError::SchemaMismatch { from: versions.0, to: versions.1 });
    }
    let plan =
        plan(&read_schema(src).await.map_err(on(Side::Source))?, &read_schema(dst).await.map_err(on(Side::Target))?)?;

    let mut read = src.begin_snapshot().await.map_err(on(Side::Source))?;
    let mut write = dst.begin_write().await.map_err(on(Side::Target))?;
    let mut totals = Vec::with_capacity(plan.len());
    let mut occupied = vec![];
    for table in &plan {
        totals.push(count(&mut read, table.name).await.map_err(on(Side::Source))?);
        let there = count(&mut write, table.name).await.map_err(on(Side::Target))?;
        if there > 0 {
            occupied.push((table.name, there));
        }
    }
    if !occupied.is_empty() {
        if !force {
            return Err(CopyError::TargetNotEmpty(occupied));
        }
        for table in plan.iter().rev() {
            write.sql(&format!("DELETE FROM {}", quote(table.name))).execute().await.map_err(on(Side::Target))?;
        }
    }
    for (table, &total) in plan.iter().zip(&totals) {
        copy_table(&mut read, &mut write, table, total, progress).await?;
    }
    // New rows must not reuse copied ids. SQLite's AUTOINCREMENT counter follows
    // explicit ids by itself; PostgreSQL's identity sequences do not. (setval is
    // not undone by a rollback: a failed copy leaves at most a gap in the ids.)
    if dst.is_postgres() {
        for table in &plan {
            for column in &table.serial {
                let sql = format!(
                    "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX({}), 0) + 1, false) FROM {}",
                    quote(column),
                    quote(table.name)
                );
                write.sql(&sql).bind(quote(table.name)).bind(column).execute().await.map_err(on(Side::Target))?;
            }
        }
    }
    // Checked before the commit, so a short copy leaves nothing behind.
    for (table, &expected) in plan.iter().zip(&totals) {
        let copied = count(&mut write, table.name).await.map_err(on(Side::Target))?;
        if copied != expected {
            return Err(CopyError::CountMismatch { table: table.name, copied, expected });
        }
    }
    write.commit().await.map_err(on(Side::Target))?;
    read.commit().await.map_err(on(Side::Source))?;
    Ok(plan.iter().map(|t| t.name).zip(totals).collect())
}

/// The migrations a database has applied.
async fn applied(db: &Backend) -> Result<Vec<i64>, sqlx::Error> {
    let rows = db.sql("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version").fetch_all().await?;
    rows.iter().map(|r| r.try_get("version")).collect()
}

async fn count(tx: &mut Tx<'_>, table: &str) -> Result<u64, sqlx::Error> {
    let n: i64 = tx.sql(&format!("SELECT COUNT(*) AS n FROM {}", quote(table))).fetch_one().await?.try_get("n")?;
    // COUNT(*) is never negative.
    Ok(n.unsigned_abs())
}

/// An identifier, quoted for both dialects.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How a column's values are carried: read with one Rust type, bound with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    Bool,
    Blob,
    Real,
}

impl Kind {
    /// PostgreSQL's `information_schema` `data_type`.
    fn of_postgres(ty: &str) -> Option<Kind> {
        match ty {
            "bigint" => Some(Kind::Int),
            "text" | "character varying" => Some(Kind::Text),
            "boolean" => Some(Kind::Bool),
            "bytea" => Some(Kind::Blob),
            "double precision" => Some(Kind::Real),
            _ => None,
        }
    }

    /// SQLite's declared type, by its affinity rules (datatype3.html §3.1), with a
    /// declared BOOLEAN as a flag.
    fn of_sqlite(ty: &str) -> Option<Kind> {
        let ty = ty.to_ascii_uppercase();
        let has = |part: &str| ty.contains(part);
        if has("BOOL") {
            Some(Kind::Bool)
        } else if has("INT") {
            Some(Kind::Int)
        } else if has("CHAR") || has("CLOB") || has("TEXT") {
            Some(Kind::Text)
        } else if has("BLOB") || ty.is_empty() {
            Some(Kind::Blob)
        } else if has("REAL") || has("FLOA") || has("DOUB") {
            Some(Kind::Real)
        } else {
            None
        }
    }

    /// The kind that carries a column typed `self` at one end and `other` at the
    /// other: SQLite keeps flags (PostgreSQL's BOOLEAN) as INTEGER 0/1.
    fn with(self, other: Kind) -> Option<Kind> {
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Kind::Int, Kind::Bool) | (Kind::Bool, Kind::Int) => Some(Kind::Bool),
            _ => None,
        }
    }

    fn read(self, row: &Row, column: &str) -> Result<Value, sqlx::Error> {
        Ok(match self {
            Kind::Int => Value::Int(row.try_get(column)?),
            Kind::Text => Value::Text(row.try_get(column)?),
            Kind::Bool => Value::Bool(row.try_get(column)?),
            Kind::Blob => Value::Blob(row.try_get(column)?),
            Kind::Real => Value::Real(row.try_get(column)?),
        })
    }
}

/// One copied value (NULL is `None`).
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(Option<bool>),
    Blob(Option<Vec<u8>>),
    Real(Option<f64>),
}

impl Value {
    fn bind<'c, 'q>(self, stmt: Stmt<'c, 'q>) -> Stmt<'c, 'q> {
        match self {
            Value::Int(v) => stmt.bind(v),
            Value::Text(v) => stmt.bind(v),
            Value::Bool(v) => stmt.bind(v),
            Value::Blob(v) => stmt.bind(v),
            Value::Real(v) => stmt.bind(v),
        }
    }
}

/// One table as a database's catalogue describes it.
#[derive(Debug, Default)]
struct TableSchema {
    /// Name, declared type, and its kind when db copy can carry that type.
    columns: Vec<(String, String, Option<Kind>)>,
    primary_key: Vec<String>,
    /// Columns a sequence fills (PostgreSQL identity or serial columns).
    serial: Vec<String>,
}

type Schema = BTreeMap<String, TableSchema>;

/// ramboot's tables in `db`, from its catalogue.
async fn read_schema(db: &Backend) -> Result<Schema, sqlx::Error> {
    let pg = db.is_postgres();
    let (tables, columns, key, serial) = if pg {
        (
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            "SELECT column_name::text AS name, data_type::text AS type FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            "SELECT a.attname::text AS name FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = quote_ident($1)::regclass AND i.indisprimary",
            Some(
                "SELECT column_name::text AS name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 \
                 AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')",
            ),
        )
    } else {
        (
            "SELECT name FROM sqlite_master WHERE type = 'table'",
            "SELECT name, type FROM pragma_table_info($1) ORDER BY cid",
            "SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk",
            None,
        )
    };
    let names = |rows: Vec<Row>| rows.iter().map(|r| r.try_get::<String>("name")).collect::<Result<Vec<_>, _>>();
    let mut schema = Schema::new();
    for table in names(db.sql(tables).fetch_all().await?)?.into_iter().filter(|t| !internal(t)) {
        let mut t = TableSchema::default();
        for row in db.sql(columns).bind(&table).fetch_all().await? {
            let ty: String = row.try_get("type")?;
            let kind = if pg { Kind::of_postgres(&ty) } else { Kind::of_sqlite(&ty) };
            t.columns.push((row.try_get("name")?, ty, kind));
        }
        t.primary_key = names(db.sql(key).bind(&table).fetch_all().await?)?;
        if let Some(serial) = serial {
            t.serial = names(db.sql(serial).bind(&table).fetch_all().await?)?;
        }
        schema.insert(table, t);
    }
    Ok(schema)
}

/// A table as the copy carries it.
#[derive(Debug)]
struct TablePlan {
    name: &'static str,
    columns: Vec<(String, Kind)>,
    /// The primary key's index in `columns`: the source is paged by it.
    key: usize,
    /// The target's sequence-filled columns.
    serial: Vec<String>,
}

/// How each table is copied, or why it cannot be: both ends must hold exactly the
/// tables of [`TABLES`], with the same columns, of types that carry over.
fn plan(from: &Schema, to: &Schema) -> Result<Vec<TablePlan>, CopyError> {
    for (side, schema) in [(Side::Source, from), (Side::Target, to)] {
        if let Some(table) = schema.keys().find(|t| !TABLES.contains(&t.as_str())) {
            return Err(CopyError::UnknownTable { side, table: table.clone() });
        }
        if let Some(&table) = TABLES.iter().find(|&&t| !schema.contains_key(t)) {
            return Err(CopyError::MissingTable { side, table });
        }
    }
    let mut plans = Vec::with_capacity(TABLES.len());
    for name in TABLES {
        let (src, dst) = (&from[name], &to[name]);
        let lone = |column: &str, side| CopyError::LoneColumn { table: name, column: column.into(), side };
        if let Some((column, ..)) = dst.columns.iter().find(|(c, ..)| !src.columns.iter().any(|(s, ..)| s == c)) {
            return Err(lone(column, Side::Target));
        }
        let mut columns = Vec::with_capacity(src.columns.len());
        for (column, from_ty, from_kind) in &src.columns {
            let (_, to_ty, to_kind) =
                dst.columns.iter().find(|(c, ..)| c == column).ok_or_else(|| lone(column, Side::Source))?;
            let kind = from_kind.zip(*to_kind).and_then(|(a, b)| a.with(b)).ok_or_else(|| CopyError::ColumnType {
                table: name,
                column: column.clone(),
                from: from_ty.clone(),
                to: to_ty.clone(),
            })?;
            columns.push((column.clone(), kind));
        }
        let [key] = src.primary_key.as_slice() else { return Err(CopyError::NoKey { table: name }) };
        let key = columns.iter().position(|(c, _)| c == key).ok_or(CopyError::NoKey { table: name })?;
        plans.push(TablePlan { name, columns, key, serial: dst.serial.clone() });
    }
    Ok(plans)
}

/// Copy one table's rows, a page at a time in primary-key order.
async fn copy_table(
    read: &mut Tx<'_>,
    write: &mut Tx<'_>,
    table: &TablePlan,
    total: u64,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(), CopyError> {
    let names: Vec<String> = table.columns.iter().map(|(c, _)| quote(c)).collect();
    let names = names.join(", ");
    let (name, key) = (quote(table.name), quote(&table.columns[table.key].0));
    let page = (MAX_PARAMS / table.columns.len().max(1)).clamp(1, BATCH);
    let limit = i64::try_from(page).unwrap_or(i64::MAX);
    let first = format!("SELECT {names} FROM {name} ORDER BY {key} LIMIT $1");
    let next = format!("SELECT {names} FROM {name} WHERE {key} > $1 ORDER BY {key} LIMIT $2");
    let mut after: Option<Value> = None;
    let mut done = 0u64;
    progress(table.name, done, total);
    loop {
        let rows = match after.take() {
            None => read.sql(&first).bind(limit),
            Some(key) => key.bind(read.sql(&next)).bind(limit),
        }
        .fetch_all()
        .await
        .map_err(on(Side::Source))?;
        let mut values = Vec::with_capacity(rows.len());
        for row in &rows {
            let row: Vec<Value> = table
                .columns
                .iter()
                .map(|(column, kind)| kind.read(row, column))
                .collect::<Result<_, _>>()
                .map_err(on(Side::Source))?;
            values.push(row);
        }
        let Some(last) = values.last() else { break };
        after = Some(last[table.key].clone());
        let fetched = values.len();
        insert(write, table, &names, values).await.map_err(on(Side::Target))?;
        done += fetched as u64;
        progress(table.name, done, total);
        if fetched < page {
            break;
        }
    }
    Ok(())
}

/// One multi-row INSERT of `rows`, each in `table.columns`' order.
async fn insert(write: &mut Tx<'_>, table: &TablePlan, names: &str, rows: Vec<Vec<Value>>) -> Result<(), sqlx::Error> {
    let mut next = 1;
    let tuples: Vec<String> =
        (0..rows.len()).map(|_| format!("({})", placeholders(&mut next, table.columns.len()))).collect();
    let sql = format!("INSERT INTO {} ({names}) VALUES {}", quote(table.name), tuples.join(", "));
    let mut stmt = write.sql(&sql);
    for value in rows.into_iter().flatten() {
        stmt = value.bind(stmt);
    }
    stmt.execute().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{grant, op, sqlite_store, store, token};
    use crate::store::{BootImage, EventKind, LeaseOp, NodeId, Role};
    use ramboot_core::node::MacAddr;
    use std::collections::BTreeMap;

    const HV: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    /// A store with a row in every table, through the Store API: an operator's node
    /// with a boot, events, a CHAP secret and a volume; 600 DHCP clients (more than
    /// a page) with leases; tokens; a gap in the node ids (a deleted node).
    async fn populate(s: &Store) -> NodeId {
        let labels = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        let hv = s.create_node(HV, Some("hv-1"), None, &labels, &op(), 1_000).await.unwrap();
        let gone =
            s.create_node(MacAddr([2, 0, 0, 0, 0, 2]), None, None, &BTreeMap::new(), &op(), 1_001).await.unwrap();
        s.delete_node(gone.id, &op(), 0).await.unwrap();
        let client = |i: u16| MacAddr([2, 1, 0, 0, (i >> 8) as u8, (i & 0xff) as u8]);
        let address = |i: u16| [10, 0, 1 + (i >> 8) as u8, (i & 0xff) as u8];
        let grants: Vec<LeaseOp> = (0..600).map(|i| grant(client(i), address(i), 5_000, true)).collect();
        assert!(s.commit_dhcp(&grants, 2_000_000).await.unwrap().is_empty());
        let release = LeaseOp::Release { mac: client(7), ip: address(7).into() };
        s.commit_dhcp(&[release], 2_500_000).await.unwrap();
        let image =
            BootImage { name: "tiny".into(), digest: "ab".repeat(32), size: 3 << 20, format: "squashfs".into() };
        let boot = s.start_boot(hv.id, "tiny", Some(&image), &token("boot-hash"), 3_000, "assigned").await.unwrap();
        s.add_event(hv.id, Some(boot), EventKind::Progress, "fetching image", 3_100).await.unwrap();
        s.set_inventory(hv.id, &serde_json::json!({"cpus": 8}), 3_200).await.unwrap();
        s.chap_secret(hv.id, || Ok::<_, StoreError>("chap-secret".into())).await.unwrap();
        s.create_volume("vm-disk", 1 << 30, &op(), 4_000).await.unwrap();
        s.attach_volume("vm-disk", hv.id, &op(), 4_100).await.unwrap();
        s.create_volume("spare", 1 << 20, &op(), 4_200).await.unwrap();
        s.create_token("admin", Role::Admin, "token-hash-1", None, &op(), 5_000).await.unwrap();
        s.create_token("prometheus", Role::Read, "token-hash-2", None, &op(), 5_000).await.unwrap();
        hv.id
    }

    /// Everything the Store API shows of a store, as text to compare.
    async fn contents(s: &Store) -> String {
        let nodes = s.nodes().await.unwrap();
        let mut out = format!("{nodes:#?}\n{:#?}\n", s.leases().await.unwrap());
        for node in &nodes {
            out += &format!("{:#?}\n", s.events(node.id, 0, 10_000).await.unwrap());
            if let Some(boot) = node.current_boot_id {
                out += &format!("{:#?}\n", s.boot(boot).await.unwrap());
            }
        }
        let hv = s.node_by_mac(HV).await.unwrap().expect("the operator's node");
        // Refuses to make up a secret: the copied one must be there.
        let chap = s.chap_secret(hv.id, || Err(StoreError::Corrupt("no CHAP secret".into()))).await.unwrap();
        out += &format!("{chap}\n{:#?}\n{:#?}\n", s.volumes().await.unwrap(), s.list_tokens().await.unwrap());
        let trail = crate::store::AuditFilter { limit: 1000, ..Default::default() };
        out += &format!("{:#?}\n", s.audit(&trail).await.unwrap());
        for hash in ["token-hash-1", "token-hash-2"] {
            out += &format!("{:?}\n", s.token_by_hash(hash).await.unwrap());
        }
        out
    }

    /// Copy `from` into `to`, recording the progress calls.
    async fn copy_logged(
        from: &Store,
        to: &Store,
        force: bool,
    ) -> (Result<Vec<(&'static str, u64)>, CopyError>, Vec<(String, u64, u64)>) {
        let mut calls = vec![];
        let result =
            copy(from, to, force, &mut |table, done, total| calls.push((table.to_string(), done, total))).await;
        (result, calls)
    }

    /// After a copy, rows the target makes get ids past every copied one.
    async fn new_rows_get_fresh_ids(source: &Store, target: &Store) {
        let max_node = source.nodes().await.unwrap().iter().map(|n| n.id).max().unwrap();
        let node = target.ensure_node(MacAddr([2, 9, 9, 9, 9, 9]), 9_000).await.unwrap();
        assert!(node.id > max_node, "node {} after {max_node}", node.id);
        let last_event = source.last_event_id().await.unwrap();
        target.add_event(node.id, None, EventKind::Info, "after the copy", 9_001).await.unwrap();
        assert!(target.last_event_id().await.unwrap() > last_event);
        let hv = source.node_by_mac(HV).await.unwrap().unwrap().current_boot_id.unwrap();
        let boot = target.start_boot(node.id, "tiny", None, &token("new-boot"), 9_002, "assigned").await.unwrap();
        assert!(boot > hv, "boot {boot} after {hv}");
        let max_volume = source.volumes().await.unwrap().iter().map(|v| v.id).max().unwrap();
        assert!(target.create_volume("new-disk", 1 << 20, &op(), 9_003).await.unwrap().id > max_volume);
        target.create_token("new-token", Role::Read, "token-hash-3", None, &op(), 9_004).await.unwrap();
    }

    async fn copies_every_row_and_id(source: &Store, target: &Store) {
        populate(source).await;
        let (copied, calls) = copy_logged(source, target, false).await;
        let copied = copied.unwrap();
        assert_eq!(copied.iter().map(|(t, _)| *t).collect::<Vec<_>>(), TABLES);
        let rows: BTreeMap<_, _> = copied.into_iter().collect();
        assert_eq!(
            (rows["nodes"], rows["leases"], rows["boots"], rows["volumes"], rows["api_tokens"]),
            (601, 600, 1, 2, 2)
        );
        assert!(rows["events"] > 600, "{rows:?}");
        assert_eq!(contents(target).await, contents(source).await);
        // Progress: each table from 0 to its total, leases a page at a time.
        for (table, total) in &rows {
            let seen: Vec<u64> = calls.iter().filter(|(t, ..)| t == table).map(|&(_, done, _)| done).collect();
            assert_eq!((seen.first(), seen.last()), (Some(&0), Some(total)), "{table}: {seen:?}");
        }
        let leases: Vec<_> =
            calls.iter().filter(|(t, ..)| t == "leases").map(|&(_, done, total)| (done, total)).collect();
        assert_eq!(leases, [(0, 600), (500, 600), (600, 600)]);
        new_rows_get_fresh_ids(source, target).await;
    }

    /// SQLite into PostgreSQL when `RAMBOOT_TEST_POSTGRES` names a server (into
    /// another SQLite file otherwise).
    #[tokio::test]
    async fn sqlite_copies_into_postgres_with_every_row_and_id() {
        let (source, _dir) = sqlite_store().await;
        let (target, _db) = store().await;
        copies_every_row_and_id(&source, &target).await;
    }

    /// And back: PostgreSQL (when there is one) into SQLite.
    #[tokio::test]
    async fn postgres_copies_into_sqlite_with_every_row_and_id() {
        let (source, _db) = store().await;
        let (target, _dir) = sqlite_store().await;
        copies_every_row_and_id(&source, &target).await;
    }

    #[tokio::test]
    async fn a_non_empty_target_is_refused_unless_forced() {
        let (source, _dir) = sqlite_store().await;
        populate(&source).await;
        let (target, _db) = store().await;
        let other = target
            .create_node(MacAddr([2, 7, 7, 7, 7, 7]), Some("other"), None, &BTreeMap::new(), &op(), 1)
            .await
            .unwrap();
        target.create_token("theirs", Role::Admin, "their-hash", None, &op(), 1).await.unwrap();
        let before = (target.nodes().await.unwrap(), target.list_tokens().await.unwrap());

        let err = copy_logged(&source, &target, false).await.0.unwrap_err();
        assert!(matches!(err, CopyError::TargetNotEmpty(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("nodes: 1 row,") && text.contains("api_tokens: 1 row"), "{text}");
        assert!(text.contains("events: 1 row,") && !text.contains("leases") && text.contains("--force"), "{text}");
        let after = (target.nodes().await.unwrap(), target.list_tokens().await.unwrap());
        assert_eq!(format!("{after:?}"), format!("{before:?}"), "the target is untouched");

        copy_logged(&source, &target, true).await.0.unwrap();
        assert_eq!(contents(&target).await, contents(&source).await);
        assert!(target.node_by_mac(other.mac).await.unwrap().is_none(), "the target's own rows are gone");
        assert!(target.token_by_hash("their-hash").await.unwrap().is_none());
    }

    /// A copy that fails on its last table leaves the target as it was, even with
    /// --force (whose deletes are in the same transaction).
    #[tokio::test]
    async fn a_failed_copy_leaves_the_target_as_it_was() {
        let (source, _dir) = sqlite_store().await;
        populate(&source).await;
        let (target, _dir2) = sqlite_store().await;
        target
            .create_node(MacAddr([2, 7, 7, 7, 7, 7]), Some("theirs"), None, &BTreeMap::new(), &op(), 1)
            .await
            .unwrap();
        let before = format!("{:?}", target.nodes().await.unwrap());
        target
            .backend
            .sql("CREATE TRIGGER refuse BEFORE INSERT ON volumes BEGIN SELECT RAISE(ABORT, 'volumes refused'); END")
            .execute()
            .await
            .unwrap();
        let err = copy_logged(&source, &target, true).await.0.unwrap_err();
        assert!(
            err.to_string().starts_with("target database: ") && err.to_string().contains("volumes refused"),
            "{err}"
        );
        assert_eq!(format!("{:?}", target.nodes().await.unwrap()), before);
        assert!(target.leases().await.unwrap().is_empty() && target.list_tokens().await.unwrap().is_empty());
    }

    /// Adds a migration this build does not have to `s`'s history.
    async fn add_future_migration(s: &Store) {
        s.backend
            .sql(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (9999, 'from the future', TRUE, $1, 0)",
            )
            .bind(vec![0u8; 4])
            .execute()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn databases_at_different_schema_versions_are_refused() {
        let (source, _dir) = sqlite_store().await;
        let (target, _db) = store().await;
        add_future_migration(&target).await;
        let err = copy_logged(&source, &target, true).await.0.unwrap_err();
        assert!(matches!(err, CopyError::SchemaMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("9999"), "{err}");
    }

    /// [`run`]'s error, as the operator reads it.
    async fn refusal(from: &str, to: &str) -> String {
        let end = |url| Endpoint { url, password_file: None };
        run(end(from), end(to), false, &mut |_, _, _| {}).await.expect_err("refused").to_string()
    }

    #[tokio::test]
    async fn run_refuses_what_it_cannot_copy_safely() {
        let dir = tempfile::tempdir().unwrap();
        let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());

        let err = refusal(&url("a.db"), "postgres://u:secret@db/ramboot").await;
        assert!(err.starts_with("--to: the URL holds a password") && !err.contains("secret"), "{err}");
        let err = refusal("postgres://u@db/r?password=secret", &url("b.db")).await;
        assert!(err.starts_with("--from: the URL holds a password") && !err.contains("secret"), "{err}");
        let err = refusal(&url("missing.db"), &url("b.db")).await;
        assert!(err.starts_with("--from: no database at") && err.contains("missing.db"), "{err}");
        assert!(!dir.path().join("missing.db").exists(), "a mistyped source is not created");

        let source = Store::open(&url("a.db")).await.unwrap();
        source.close().await;
        let parent = dir.path().file_name().unwrap().to_string_lossy();
        let same = format!("sqlite://{}/../{parent}/a.db", dir.path().display());
        assert_eq!(refusal(&url("a.db"), &same).await, "--from and --to name the same database");

        // A source a newer ramboot migrated is neither downgraded nor copied.
        let source = Store::open(&url("a.db")).await.unwrap();
        add_future_migration(&source).await;
        source.close().await;
        let err = refusal(&url("a.db"), &url("b.db")).await;
        assert!(err.starts_with("the source database has migration 9999, which this ramboot does not know"), "{err}");
    }

    /// Every foreign key points to a table earlier in [`TABLES`] (or to its own), so
    /// rows go in parents first; and [`TABLES`] is exactly the schema's tables.
    #[tokio::test]
    async fn tables_are_every_table_parents_first() {
        let (s, _dir) = sqlite_store().await;
        let schema = read_schema(&s.backend).await.unwrap();
        assert_eq!(schema.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(), TABLES.into());
        for (i, table) in TABLES.iter().enumerate() {
            let rows = s
                .backend
                .sql("SELECT \"table\" AS parent FROM pragma_foreign_key_list($1)")
                .bind(*table)
                .fetch_all()
                .await
                .unwrap();
            for row in rows {
                let parent: String = row.try_get("parent").unwrap();
                assert!(TABLES[..=i].contains(&parent.as_str()), "{table} refers to {parent}, listed after it");
            }
        }
    }

    #[test]
    fn column_kinds_carry_between_the_dialects() {
        assert_eq!(
            Kind::of_sqlite("INTEGER").zip(Kind::of_postgres("boolean")).and_then(|(a, b)| a.with(b)),
            Some(Kind::Bool)
        );
        assert_eq!(Kind::of_sqlite("integer"), Kind::of_postgres("bigint"));
        assert_eq!(Kind::of_sqlite("TEXT"), Kind::of_postgres("text"));
        assert_eq!(Kind::of_sqlite("BLOB"), Kind::of_postgres("bytea"));
        assert_eq!(Kind::Text.with(Kind::Int), None);
        assert_eq!(Kind::of_postgres("integer"), None, "an int4 is not read as i64");
    }

    #[test]
    fn passwords_in_urls_are_found() {
        for url in ["postgres://u:pw@h/db", "postgresql://u:pw@h", "postgres:///db?host=/run&password=pw"] {
            assert!(url_holds_password(url), "{url}");
        }
        for url in ["postgres://u@h/db", "postgres:///db?host=/run/pg&user=u", "sqlite:///a:b@c.db"] {
            assert!(!url_holds_password(url), "{url}");
        }
    }
}
