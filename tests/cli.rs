//! The `ramboot` CLI against a running server: every subcommand, tables and --json,
//! token from the flag and from the environment, and errors that say what failed.

mod common;

use common::TestServer;
use serde_json::Value;
use std::process::{Command, Output};

fn ramboot(srv: &TestServer, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(args)
        .env("RAMBOOT_SERVER", &srv.base)
        .env("RAMBOOT_TOKEN", token)
        .output()
        .expect("running ramboot")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn fails(out: Output) -> String {
    assert!(!out.status.success(), "should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn operators_manage_nodes_from_the_cli() {
    let srv = TestServer::start();
    let (admin, reader) = (srv.admin.clone(), srv.reader.clone());
    let mac = "52:54:00:c1:00:01";

    let text = ok(ramboot(&srv, &admin, &["nodes", "add", mac, "--hostname", "hv-1", "--label", "rack=r1"]));
    assert!(text.contains("hv-1") && text.contains("discovered") && text.contains("rack=r1"), "{text}");
    let text = ok(ramboot(&srv, &admin, &["nodes", "assign", mac, "tiny"]));
    assert!(text.contains("tiny") && text.contains("assigned"), "{text}");
    let text = ok(ramboot(&srv, &admin, &["nodes", "label", mac, "role=hypervisor", "rack-"]));
    assert!(text.contains("role=hypervisor") && !text.contains("rack="), "{text}");
    let text = ok(ramboot(&srv, &admin, &["nodes", "maintenance", mac, "--on", "--reason", "dimm swap"]));
    assert!(text.contains("maintenance"), "{text}");
    let text = ok(ramboot(&srv, &admin, &["nodes", "maintenance", mac, "--off"]));
    assert!(text.contains("assigned"), "{text}");
    let text = ok(ramboot(&srv, &admin, &["nodes", "reprovision", mac]));
    assert!(text.contains("assigned"), "{text}");

    // Reads with the read token; --json gives the API's JSON.
    let nodes: Value =
        serde_json::from_str(&ok(ramboot(&srv, &reader, &["nodes", "ls", "--json", "--label", "role=hypervisor"])))
            .unwrap();
    assert_eq!(nodes[0]["hostname"], "hv-1");
    let found = ok(ramboot(&srv, &reader, &["nodes", "ls", "--search", "HV-"]));
    assert!(found.contains("hv-1"), "a search over hostnames, any case: {found}");
    let none = ok(ramboot(&srv, &reader, &["nodes", "ls", "--search", "no-such-host"]));
    assert!(!none.contains("hv-1"), "{none}");
    let text = ok(ramboot(&srv, &reader, &["nodes", "show", mac]));
    assert!(text.contains("[maintenance] maintenance: dimm swap") && text.contains("reprovision requested"), "{text}");
    let text = ok(ramboot(&srv, &reader, &["events", "--node", mac, "--last", "3"]));
    assert_eq!(text.lines().count(), 3, "{text}");
    let text = ok(ramboot(&srv, &reader, &["profiles", "ls"]));
    assert!(text.contains("tiny") && text.contains("stage1"), "{text}");
    let text = ok(ramboot(&srv, &reader, &["images", "ls"]));
    assert!(text.contains("tiny") && text.contains("rootfs") && text.contains("3.0 MiB"), "{text}");

    // Changes need the admin role, and errors say what happened.
    let err = fails(ramboot(&srv, &reader, &["nodes", "rm", mac]));
    assert!(err.contains("HTTP 403") && err.contains("admin role"), "{err}");
    let err = fails(ramboot(&srv, &admin, &["nodes", "assign", mac, "ghost"]));
    assert!(err.contains("HTTP 422") && err.contains("no valid profile named \"ghost\""), "{err}");
    let err = fails(ramboot(&srv, "wrong", &["nodes", "ls"]));
    assert!(err.contains("HTTP 401"), "{err}");
    let err = fails(ramboot(&srv, &admin, &["nodes", "label", mac, "nonsense"]));
    assert!(err.contains("key=value"), "{err}");

    ok(ramboot(&srv, &admin, &["nodes", "rm", mac]));
    let err = fails(ramboot(&srv, &reader, &["nodes", "show", mac]));
    assert!(err.contains("HTTP 404"), "{err}");
}

#[test]
fn events_follow_streams_new_events() {
    let srv = TestServer::start();
    let mut follow = Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["events", "--follow", "--json", "--server", &srv.base, "--token", &srv.reader])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    srv.lease("52:54:00:c1:00:02");
    let (status, _) = common::call(common::agent().get(&srv.url("/boot.ipxe?mac=52:54:00:c1:00:02")));
    assert_eq!(status, 200);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let mut seen = vec![];
    while seen.len() < 3 {
        let line = lines.next().expect("the stream stays open").unwrap();
        let event: Value = serde_json::from_str(&line).unwrap();
        seen.push(event["message"].as_str().unwrap().to_string());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen[0].starts_with("first seen"), "{seen:?}");
    assert!(seen[1].starts_with("DHCP lease 127.0.0.1"), "{seen:?}");
    assert!(seen[2].starts_with("iPXE script served"), "{seen:?}");
}

#[test]
fn tokens_are_created_once_used_and_revoked() {
    let srv = TestServer::start();
    let admin = srv.admin.clone();
    let token = ok(ramboot(&srv, &admin, &["tokens", "create", "prometheus", "--role", "read"])).trim().to_string();
    assert_eq!(token.len(), 64, "the secret alone on stdout: {token:?}");
    ok(ramboot(&srv, &token, &["nodes", "ls"]));
    let err = fails(ramboot(&srv, &token, &["tokens", "create", "sneaky", "--role", "admin"]));
    assert!(err.contains("HTTP 403"), "a read token cannot mint tokens: {err}");
    let list = ok(ramboot(&srv, &admin, &["tokens", "ls"]));
    assert!(list.contains("prometheus") && list.contains("read") && !list.contains(&token), "{list}");
    let err = fails(ramboot(&srv, &admin, &["tokens", "create", "prometheus"]));
    assert!(err.contains("HTTP 409"), "{err}");
    ok(ramboot(&srv, &admin, &["tokens", "rm", "prometheus"]));
    let err = fails(ramboot(&srv, &token, &["nodes", "ls"]));
    assert!(err.contains("HTTP 401"), "a revoked token is dead: {err}");
    let err = fails(ramboot(&srv, &admin, &["tokens", "rm", "admin"]));
    assert!(err.contains("HTTP 409") && err.contains("last admin token"), "{err}");

    // Time-boxed access: the expiry is shown when made and listed.
    let out = ramboot(&srv, &admin, &["tokens", "create", "oncall", "--role", "admin", "--expires", "2h"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("valid until"), "{out:?}");
    let oncall = ok(out).trim().to_string();
    ok(ramboot(&srv, &oncall, &["nodes", "add", "52:54:00:00:c1:01", "--hostname", "hv-7"]));
    let list = ok(ramboot(&srv, &admin, &["tokens", "ls"]));
    let line = list.lines().find(|l| l.starts_with("oncall")).unwrap_or_else(|| panic!("{list}"));
    assert!(!line.ends_with("never"), "{list}");
    let err = fails(ramboot(&srv, &admin, &["tokens", "create", "x", "--expires", "soon"]));
    assert!(err.contains("--expires"), "{err}");

    // The audit trail names who did what, one line each.
    let trail = ok(ramboot(&srv, &admin, &["audit"]));
    let lines: Vec<&str> = trail.lines().collect();
    assert!(lines.iter().any(|l| l.contains("token admin") && l.contains("token.create") && l.contains("prometheus")));
    assert!(lines.iter().any(|l| l.contains("token admin") && l.contains("token.delete") && l.contains("prometheus")));
    let created = lines.iter().find(|l| l.contains("node.create")).unwrap_or_else(|| panic!("{trail}"));
    assert!(created.contains("token oncall") && created.contains(r#"hostname="hv-7""#), "{created}");
    let only = ok(ramboot(&srv, &admin, &["audit", "--actor", "oncall"]));
    assert_eq!(only.lines().count(), 1, "{only}");
}

/// The server binary never builds the agent: a stage-one build with no `--agent` and
/// no `ramboot-agent` beside the executable fails, saying how to build one.
#[test]
fn a_stage_one_build_without_an_agent_says_how_to_build_one() {
    // A hard link of the binary in a directory of its own: nothing beside it.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = dir.path().join("ramboot");
    std::fs::hard_link(env!("CARGO_BIN_EXE_ramboot"), &exe).unwrap();
    let recipes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
    let out = Command::new(&exe)
        .args(["images", "build", "stage1", "--recipes"])
        .arg(&recipes)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .output()
        .expect("running ramboot");
    let err = fails(out);
    assert!(err.contains("cargo build --release -p ramboot-agent --target x86_64-unknown-linux-gnu"), "{err}");
    assert!(err.contains("--agent"), "{err}");
}

/// `ramboot db copy`: refused into a database that holds rows (naming its tables),
/// done with --force, progress on stderr and rows per table on stdout. SQLite into
/// PostgreSQL when `RAMBOOT_TEST_POSTGRES` names a server, else into SQLite.
#[test]
fn db_copy_moves_a_database_and_overwrites_one_only_when_forced() {
    use ramboot::store::{Role, Store};
    use ramboot_core::node::MacAddr;
    let (ours, theirs) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
    let dir = tempfile::tempdir().unwrap();
    let source = format!("sqlite://{}", dir.path().join("source.db").display());
    let postgres = common::testdb::TestDb::postgres();
    let target = match &postgres {
        Some(db) => db.url().to_string(),
        None => format!("sqlite://{}", dir.path().join("target.db").display()),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Store::open(&source).await.unwrap();
        s.create_node(ours, Some("hv-1"), None, &Default::default(), &common::operator(), 1).await.unwrap();
        s.create_token("admin", Role::Admin, "admin-hash", None, &common::operator(), 1).await.unwrap();
        s.close().await;
        let t = Store::open(&target).await.unwrap();
        t.create_node(theirs, None, None, &Default::default(), &common::operator(), 1).await.unwrap();
        t.close().await;
    });
    let db_copy = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ramboot"))
            .args(["db", "copy", "--from", &source, "--to", &target])
            .args(extra)
            .output()
            .expect("running ramboot")
    };

    let err = fails(db_copy(&[]));
    assert!(err.contains("the target database is not empty (nodes: 1 row") && err.contains("--force"), "{err}");

    let out = db_copy(&["--force"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(out);
    assert!(stdout.contains("nodes: 1\n") && stdout.contains("api_tokens: 1\n") && stdout.contains("leases: 0\n"));
    assert!(stderr.contains("copied nodes: 1/1 rows"), "{stderr}");
    rt.block_on(async {
        let t = Store::open(&target).await.unwrap();
        assert_eq!(t.node_by_mac(ours).await.unwrap().unwrap().hostname, "hv-1");
        assert!(t.node_by_mac(theirs).await.unwrap().is_none(), "--force replaced the target's rows");
        assert_eq!(t.token_by_hash("admin-hash").await.unwrap().map(|t| t.role), Some(Role::Admin));
        t.close().await;
    });

    // A password belongs in a file or PGPASSWORD, never the URL (which is shown).
    let out = Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["db", "copy", "--from", &source, "--to", "postgres://u:hunter2@db/ramboot"])
        .output()
        .unwrap();
    let err = fails(out);
    assert!(err.contains("--to: the URL holds a password") && !err.contains("hunter2"), "{err}");
}

/// The shell completions and man pages come from the CLI's own definition: every
/// subcommand is in them.
#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ramboot")).args(args).output().unwrap();
        assert!(out.status.success(), "ramboot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ramboot.bash");
    std::fs::write(&script, &bash).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    for shell in ["zsh", "fish"] {
        assert!(run(&["completions", shell]).contains("boot-chain"), "{shell}: the nodes subcommands are there");
    }
    let man = dir.path().join("man");
    run(&["man", man.to_str().unwrap()]);
    let top = std::fs::read_to_string(man.join("ramboot.1")).unwrap();
    assert!(top.contains(".TH ramboot 1"), "{top}");
    for sub in ["serve", "nodes", "nodes-assign", "nodes-boot-chain", "images-build", "db-copy", "completions"] {
        let page = man.join(format!("ramboot-{sub}.1"));
        assert!(page.is_file(), "no man page for `ramboot {sub}`");
    }
    let serve = std::fs::read_to_string(man.join("ramboot-serve.1")).unwrap();
    assert!(serve.contains("log\\-format"), "options are documented: {serve}");
}

/// The examples `ramboot --help` prints are commands README.md shows too.
#[test]
fn help_examples_are_the_readmes() {
    let out = Command::new(env!("CARGO_BIN_EXE_ramboot")).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Examples:"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(examples.len() >= 5, "{help}");
    for example in examples {
        assert!(readme.contains(example), "`ramboot --help` shows {example:?}, which README.md does not");
    }
}
