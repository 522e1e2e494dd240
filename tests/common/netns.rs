//! `ramboot serve` in a test's network-namespace lab ([`ramboot_lab::harness::Lab`]):
//! starting and stopping the real binary, reading its lease store, and a private
//! ISC `dhclient` to test it with. Test-only glue; the lab itself (namespaces,
//! processes, waits, logs) is `ramboot_lab::harness`.

use super::testdb::TestDb;
use ramboot::store::{Lease, Store};
use ramboot_lab::harness::{log_text, read_lossy, tail, tool, udp_port_bound, wait_for, write_executable, Lab};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// Where ISC `dhclient` may be.
pub const DHCLIENT: &[&str] = &["/usr/sbin/dhclient", "/sbin/dhclient"];

/// A `ramboot serve` a [`Lab`] started: its process index and log.
pub struct Ramboot {
    pub idx: usize,
    pub log: PathBuf,
}

/// Running this package's `ramboot serve` in a [`Lab`].
pub trait ServeInLab {
    fn start_ramboot(&mut self, ns: &str, config: &str, rust_log: &str) -> Ramboot;
    /// [`ServeInLab::start_ramboot`] for one of several servers in the lab: its
    /// config, data, profiles, iPXE directory and log under `<lab>/<name>/`; its
    /// database the lab's (so servers of one lab share it on PostgreSQL).
    fn start_named_ramboot(&mut self, name: &str, ns: &str, config: &str, rust_log: &str) -> Ramboot;
    fn stop_ramboot(&mut self, ramboot: &Ramboot) -> String;
    fn database_url(&self) -> String;
}

impl ServeInLab for Lab {
    /// Start `ramboot serve` in `ns` with `config` (YAML up to, not including, the
    /// `paths:` section, which this adds under the lab's temp dir) and `RUST_LOG`
    /// `rust_log`, and wait until DHCP serves: the log line, or (should its wording
    /// change) the DHCP socket bound, where requests queue until the service reads.
    fn start_ramboot(&mut self, ns: &str, config: &str, rust_log: &str) -> Ramboot {
        self.start_named_ramboot("", ns, config, rust_log)
    }

    fn start_named_ramboot(&mut self, name: &str, ns: &str, config: &str, rust_log: &str) -> Ramboot {
        let root = self.dir().join(name);
        for d in ["data", "profiles", "ipxe"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let paths =
            format!("paths:\n  data: {r}/data\n  profiles: {r}/profiles\n  ipxe: {r}/ipxe\n", r = root.display());
        let database = lab_postgres_url(self).map(|url| format!("database: \"{url}\"\n")).unwrap_or_default();
        let config_path = root.join("ramboot.yaml");
        std::fs::write(&config_path, format!("{config}{database}{paths}")).unwrap();
        let log = root.join("ramboot.log");
        let program =
            [env!("CARGO_BIN_EXE_ramboot"), "serve", "--config", &config_path.display().to_string()].map(String::from);
        let idx = self.spawn(
            if name.is_empty() { "ramboot" } else { name },
            ns,
            &program,
            &log,
            &[("RUST_LOG", rust_log), ("NO_COLOR", "1")],
        );
        // An IPv6-only server (`dhcp.ipv4: false`) binds no port 67.
        let ready =
            |text: &str| text.contains("DHCP serving") || text.contains("DHCPv6 serving") || udp_port_bound(ns, 67);
        self.wait_ready(idx, &log, Duration::from_secs(30), "\"DHCP serving\"", ready);
        Ramboot { idx, log }
    }

    /// Stop ramboot with SIGTERM; it must exit cleanly. Returns its log.
    fn stop_ramboot(&mut self, ramboot: &Ramboot) -> String {
        let status = self.stop(ramboot.idx, Duration::from_secs(15));
        let log = log_text(&ramboot.log);
        assert!(status.is_some_and(|s| s.success()), "ramboot did not exit cleanly: {status:?}\n{}", tail(&log, 30));
        log
    }

    /// The URL of the lease store of the ramboot [`ServeInLab::start_ramboot`] configures.
    fn database_url(&self) -> String {
        lab_postgres_url(self).unwrap_or_else(|| format!("sqlite://{}", self.path("data/ramboot.db").display()))
    }
}

thread_local! {
    /// Each lab's PostgreSQL database, when `RAMBOOT_TEST_POSTGRES` names a server.
    /// Kept per test thread, so it is dropped when the test's thread ends: after the
    /// test's lab (and the ramboot in it) is gone.
    static LAB_DATABASES: RefCell<HashMap<PathBuf, Option<TestDb>>> = RefCell::new(HashMap::new());
}

/// The URL of `lab`'s PostgreSQL database (created on first use), or `None`: SQLite.
fn lab_postgres_url(lab: &Lab) -> Option<String> {
    LAB_DATABASES.with(|dbs| {
        let mut dbs = dbs.borrow_mut();
        let db = dbs.entry(lab.dir().to_path_buf()).or_insert_with(TestDb::postgres);
        db.as_ref().map(|db| db.url().to_string())
    })
}

/// Take `lab`'s PostgreSQL database away from its servers, or give it back (see
/// [`TestDb::set_reachable`]). Panics without one.
pub fn set_lab_database_reachable(lab: &Lab, reachable: bool) {
    LAB_DATABASES.with(|dbs| {
        let dbs = dbs.borrow();
        let db = dbs.get(lab.dir()).and_then(Option::as_ref).expect("the lab's PostgreSQL database");
        db.set_reachable(reachable);
    })
}

// ---------------------------------------------------------------------------------
// The lease store

/// Every lease row in the store at `url` (state, expiry and all).
pub fn store_leases(url: &str) -> Vec<Lease> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
        let leases = store.leases().await.unwrap();
        store.close().await;
        leases
    })
}

/// The lease rows of one client MAC.
pub fn leases_of(url: &str, mac: &str) -> Vec<Lease> {
    store_leases(url).into_iter().filter(|l| l.mac.to_string() == mac).collect()
}

impl Ramboot {
    /// Wait while the lab's process `qemu` runs, at most `timeout`, until this ramboot
    /// has served the boot script to `mac` (the handler's span names the MAC).
    pub fn wait_script_served(
        &self,
        lab: &mut Lab,
        qemu: usize,
        mac: &str,
        timeout: Duration,
        context: impl Fn() -> String,
    ) {
        let served = format!("boot{{mac={mac} source=");
        let fetched = || log_text(&self.log).contains(&served).then_some(());
        lab.wait_alive(qemu, timeout, "the VM's iPXE to fetch /boot.ipxe from ramboot", fetched, context);
    }

    /// Wait while `qemu` runs, at most `timeout`, until this ramboot has logged a
    /// complete TFTP read of `file`.
    pub fn wait_tftp_read(
        &self,
        lab: &mut Lab,
        qemu: usize,
        file: &str,
        timeout: Duration,
        context: impl Fn() -> String,
    ) {
        let read = || (!tftp_reads(&log_text(&self.log), file).is_empty()).then_some(());
        lab.wait_alive(qemu, timeout, &format!("ramboot to log a complete TFTP read of {file}"), read, context);
    }
}

/// The lines of ramboot's log for complete TFTP reads of `file` (logged on the last
/// block's ACK, in the span `tftp{client=… file=…}`).
pub fn tftp_reads<'a>(log: &'a str, file: &str) -> Vec<&'a str> {
    let span = format!(" file={file}}}");
    log.lines().filter(|l| l.contains(&span) && l.contains("TFTP read") && l.contains(" bytes=")).collect()
}

/// A ramboot log must show no error and no NAK.
pub fn assert_no_errors_or_naks(log: &str) {
    assert!(!log.contains(" ERROR "), "ramboot logged errors:\n{log}");
    assert!(!log.contains("reply=Nak"), "ramboot NAKed:\n{log}");
}

// ---------------------------------------------------------------------------------
// ISC dhclient

/// ISC `dhclient` with a private config, script, lease file and pid file in a lab's
/// temp dir, run from a private copy of its binary: AppArmor's profile for
/// /usr/sbin/dhclient (enforced on stock Debian) forbids a script and lease file in a
/// temp dir. Nothing of the host's DHCP client configuration is used.
pub struct Dhclient {
    binary: PathBuf,
    files: Vec<String>,
    pid_file: PathBuf,
}

impl Dhclient {
    /// Copy the binary into `lab`'s dir and write `conf` (dhclient.conf) and `script`
    /// (the `-sf` script, made executable) beside it.
    pub fn new(lab: &Lab, conf: &str, script: &str) -> Dhclient {
        let binary = lab.path("dhclient");
        write_executable(&binary, std::fs::read(tool(DHCLIENT)).unwrap());
        let (conf_path, script_path) = (lab.path("dhclient.conf"), lab.path("dhclient-script"));
        std::fs::write(&conf_path, conf).unwrap();
        write_executable(&script_path, script);
        let files = [
            ("-cf", conf_path),
            ("-sf", script_path),
            ("-lf", lab.path("dhclient.leases")),
            ("-pf", lab.path("dhclient.pid")),
        ];
        let pid_file = lab.path("dhclient.pid");
        let files = files.iter().flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()]).collect();
        Dhclient { binary, files, pid_file }
    }

    /// The command line `dhclient -4 <flags> <the private files> <interface>`.
    pub fn args(&self, flags: &[&str], interface: &str) -> Vec<String> {
        self.args_of_family("-4", flags, interface)
    }

    /// The same for DHCPv6: `dhclient -6 ...`.
    pub fn args6(&self, flags: &[&str], interface: &str) -> Vec<String> {
        self.args_of_family("-6", flags, interface)
    }

    fn args_of_family(&self, family: &str, flags: &[&str], interface: &str) -> Vec<String> {
        let mut args = vec![self.binary.display().to_string(), family.into()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(self.files.iter().cloned());
        args.push(interface.to_string());
        args
    }

    /// `dhclient -r` in `ns`: it must release `leased` and succeed, and the running
    /// dhclient `running` (found through the pid file) must exit; returns how it ended.
    /// `events` is the file the `-sf` script records its events in.
    pub fn release(
        &self,
        lab: &mut Lab,
        (ns, interface): (&str, &str),
        leased: Ipv4Addr,
        running: usize,
        events: &Path,
        context: impl Fn() -> String,
    ) -> ExitStatus {
        // With -d, dhclient rewrites its pid file (truncated, then the number written)
        // after the script of each bind (BOUND, RENEW) has run: just after the script
        // recorded its event the file can be empty for a moment, and a `-r` reading it
        // then stops nothing, so the running dhclient goes on. Wait for that rewrite:
        // the pid file written no earlier than the last event, holding the running PID.
        let pid_line = format!("{}\n", lab.pid(running));
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let rewritten = || {
            let (written, event) = (modified(&self.pid_file)?, modified(events)?);
            (written >= event && read_lossy(&self.pid_file) == pid_line).then_some(())
        };
        wait_for(Duration::from_secs(5), "dhclient to rewrite its pid file after the last event", rewritten, &context);
        let log = lab.path("dhclient-release.log");
        let status = lab.run(ns, &self.args(&["-r", "-v"], interface), &log, Duration::from_secs(20));
        let out = read_lossy(&log);
        assert!(status.success(), "dhclient -r: {status}\n{out}");
        assert!(out.contains(&format!("DHCPRELEASE of {leased}")), "{out}");
        wait_for(Duration::from_secs(5), "the running dhclient to exit after -r", || lab.try_wait(running), context)
    }
}

/// `ramboot ARGS` in `ns` against the server at `base` (its URL) with API `token`:
/// (success, stdout, stderr).
pub fn cli_in(ns: &str, base: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ramboot")])
        .args(args)
        .env("RAMBOOT_SERVER", base)
        .env("RAMBOOT_TOKEN", token)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running ramboot");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The lab's built `stage1` and `tiny` images (cached with lab_e2e's under
/// `CARGO_TARGET_TMPDIR/lab-e2e`, rebuilt when the agent or a recipe changed),
/// linked into the data directory `data` of a server.
pub fn link_lab_images(data: &Path) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-e2e");
    let profiles = repo.join("profiles");
    let set = ramboot::profiles::load_dir(&profiles, &ramboot::profiles::Context::for_dir(&profiles, None))
        .unwrap_or_else(|e| panic!("{e}"));
    let tiny = set.get("tiny").expect("profiles/tiny.yaml");
    ramboot_lab::setup::ensure_images(&repo, &cache.join("data"), &cache.join("cache"), tiny, false, None)
        .unwrap_or_else(|e| panic!("building the lab images: {e:#}"));
    ramboot_lab::setup::link_tree(&cache.join("data/images"), &data.join("images")).unwrap();
}

/// One admin-API GET of `path` (under `/api/v1`) from inside `ns` against the
/// server at `base`; `None` while it does not answer (or answers an error).
pub fn api_get_in(ns: &str, base: &str, token: &str, path: &str) -> Option<serde_json::Value> {
    ramboot_lab::redfish::in_netns(ns, || {
        let req = ureq::get(&format!("{base}/api/v1{path}")).set("Authorization", &format!("Bearer {token}"));
        req.call().ok().and_then(|r| r.into_json().ok())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}
