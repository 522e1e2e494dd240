//! A PostgreSQL database of a test's own, when `RAMBOOT_TEST_POSTGRES` names a
//! server (e.g. `postgres:///?host=/var/run/postgresql&user=ramboot_test`, a role
//! that may create databases): created empty, named after the test and the process
//! so tests run in parallel, and dropped when the guard goes. Without the variable
//! there is none and tests use SQLite, as ever.
//!
//! Test-only, and shared: the store's unit tests compile it as `store::testdb`,
//! integration tests through `#[path]` from `tests/common`, so it uses nothing of
//! the crate (std, sqlx, tokio only).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable naming the server tests create their databases on.
pub const ENV: &str = "RAMBOOT_TEST_POSTGRES";

/// Set by `.ci/run` for its first pass (SQLite), which a PostgreSQL pass follows:
/// tests that need PostgreSQL may skip there, and run in the second pass.
#[allow(dead_code)] // for the integration tests that need PostgreSQL
pub const POSTGRES_PASS_FOLLOWS: &str = "RAMBOOT_TEST_POSTGRES_PASS_FOLLOWS";

/// One test's database; dropped (with `FORCE`, closing what still uses it) on drop.
pub struct TestDb {
    server: String,
    name: String,
    url: String,
}

impl TestDb {
    /// A new, empty database on the server `RAMBOOT_TEST_POSTGRES` names, or `None`
    /// when it names none. Panics (it is a test) when the server refuses.
    pub fn postgres() -> Option<TestDb> {
        let server = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // The test harness names each test's thread after the test.
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("test").rsplit("::").next().unwrap_or("test");
        let slug: String = test.chars().filter(char::is_ascii_alphanumeric).take(32).collect();
        let name =
            format!("rt_{}_{}_{}", slug.to_ascii_lowercase(), std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        if let Err(e) = on_server(&server, format!("CREATE DATABASE {name}")) {
            panic!("{ENV}: creating database {name}: {e}");
        }
        let url = with_database(&server, &name);
        Some(TestDb { server, name, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Take the database away from its clients (`false`: no new connections, and
    /// every open one terminated, as when its server goes down) or give it back.
    #[allow(dead_code)] // for the integration tests of a lost database
    pub fn set_reachable(&self, reachable: bool) {
        let mut statements = vec![format!("ALTER DATABASE {} ALLOW_CONNECTIONS {reachable}", self.name)];
        if !reachable {
            // Terminating is a signal the backend acts on when it next can: until
            // it has exited, a write it is given may still commit (and its client
            // hear of it only as a broken connection). So wait (at most 10 s) until
            // no backend of the database is left: the outage is real when this returns.
            statements.push(format!(
                "DO $$
                 DECLARE remaining int;
                 BEGIN
                   FOR i IN 1..100 LOOP
                     PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';
                     PERFORM pg_stat_clear_snapshot();
                     SELECT count(*) INTO remaining FROM pg_stat_activity WHERE datname = '{name}';
                     EXIT WHEN remaining = 0;
                     PERFORM pg_sleep(0.1);
                   END LOOP;
                 END $$",
                name = self.name
            ));
        }
        for statement in statements {
            if let Err(e) = on_server(&self.server, statement) {
                panic!("{ENV}: making {} reachable={reachable}: {e}", self.name);
            }
        }
    }

    /// Why a test that needs PostgreSQL cannot run: `RAMBOOT_TEST_POSTGRES` is unset.
    #[allow(dead_code)] // for the integration tests that need PostgreSQL
    pub fn postgres_missing() -> Option<String> {
        std::env::var(ENV).ok().filter(|v| !v.is_empty()).is_none().then(|| {
            format!("{ENV} names no PostgreSQL server (servers share leases only through PostgreSQL; .ci/run sets it)")
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // No panic here: the test may be unwinding already.
        if let Err(e) = on_server(&self.server, format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("{ENV}: dropping database {}: {e}", self.name);
        }
    }
}

/// `url` with its database (the path) replaced by `db`, query kept.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Run one statement on the server's `postgres` database, from a thread of its own
/// (the caller may be inside a runtime, or in `Drop`).
fn on_server(server: &str, statement: String) -> Result<(), String> {
    let server = with_database(server, "postgres");
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            use sqlx::{ConnectOptions, Executor};
            let options: sqlx::postgres::PgConnectOptions = server.parse()?;
            let mut conn = options.connect().await?;
            conn.execute(statement.as_str()).await?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .join();
    match done {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("the thread running the statement panicked".into()),
    }
}
