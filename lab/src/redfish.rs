//! A real Redfish BMC for tests: sushy-tools' `sushy-emulator` (libvirt driver) over
//! QEMU domains run by a private libvirtd, all inside a lab namespace so the
//! domains' NICs are on the test's bridge.
//!
//! Why it is shaped this way (measured on Debian 12, libvirt 9.0, sushy-tools 2.2):
//! - libvirtd as root is the "system" daemon: it wants the `libvirt-qemu` user of
//!   `libvirt-daemon-system` and the fixed `/run/libvirt`, `/var/lib/libvirt`
//!   directories. As an unprivileged user it is a "session" daemon whose every
//!   directory follows `XDG_*`, so [`Libvirtd`] runs one as `nobody` in a temp dir
//!   of its own, and clients reach it at `qemu:///session?socket=…`.
//! - A session daemon cannot make taps, so each domain gets a tap the lab creates
//!   (owned by that user, enslaved to the bridge) as `<interface type='ethernet'>`
//!   with `managed='no'`.
//! - The domain boots from its (empty) disk only: SeaBIOS runs with `strict=on`, so
//!   without a boot override it never tries the NIC. sushy's override rewrites the
//!   domain's per-device boot order (NIC first, then the disk) and reports it as
//!   `Continuous` whatever `BootSourceOverrideEnabled` said.
//! - sushy checks HTTP basic auth against an htpasswd file with bcrypt hashes only.
//!
//! Dropping a [`Bmc`] stops sushy, destroys and undefines the domains (killing a
//! QEMU that outlives that, by the PID libvirt wrote in our own directory), stops
//! libvirtd by PID and removes its directory. Processes of others are never touched.

use crate::net::{in_ns, ip_in};
use crate::process::Proc;
use crate::LabError;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const LIBVIRTD: &[&str] = &["/usr/sbin/libvirtd"];
pub const VIRSH: &[&str] = &["/usr/bin/virsh"];
pub const SETPRIV: &[&str] = &["/usr/bin/setpriv", "/bin/setpriv"];
pub const PYTHON3_LIBVIRT: &[&str] = &["/usr/lib/python3/dist-packages/libvirt.py"];
/// Where `.ci/run` installs sushy-tools: a venv over Debian's python3, which sees
/// Debian's python3-libvirt.
pub const SUSHY_VENV: &str = "/opt/ramboot-ci/sushy";
pub const SUSHY_EMULATOR: &[&str] = &["/opt/ramboot-ci/sushy/bin/sushy-emulator"];

/// What a test with a Redfish BMC needs beyond a VM's tools (CI installs it all).
pub const TOOLS: [(&str, &[&str]); 5] = [
    ("libvirtd (libvirt-daemon, libvirt-daemon-driver-qemu)", LIBVIRTD),
    ("virsh (libvirt-clients)", VIRSH),
    ("setpriv (util-linux)", SETPRIV),
    ("python3-libvirt", PYTHON3_LIBVIRT),
    ("sushy-emulator (sushy-tools in /opt/ramboot-ci/sushy, see .ci/run)", SUSHY_EMULATOR),
];

/// The unprivileged user the session libvirtd and its QEMUs run as (`nobody`).
pub const DAEMON_ID: u32 = 65534;

/// Run `f` on a thread that has joined namespace `ns` (a thread's network
/// namespace is its own: the rest of the process stays where it is); its result.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| LabError::file(&path, e))?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::Other(format!("joining namespace {ns}: {e}")))?;
            Ok(f())
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

// ---------------------------------------------------------------------------------
// Domains

/// A VM to define: TCG, SeaBIOS with its console on serial, an e1000 NIC with
/// QEMU's iPXE ROM on a new tap on `bridge`, and an empty disk it boots from first.
#[derive(Debug, Clone)]
pub struct Vm {
    pub name: String,
    pub mac: String,
    pub bridge: String,
    pub tap: String,
    pub memory_mb: u32,
}

/// A defined domain.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    pub mac: String,
    /// The serial console (SeaBIOS, iPXE and on), appended across power-ons.
    pub console: PathBuf,
}

/// The domain XML of `vm` (pure; names and the MAC are checked by the caller).
pub fn domain_xml(vm: &Vm, disk: &Path, console: &Path) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <bios useserial='yes'/>
  </os>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>{qemu}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
    </disk>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{tap}' managed='no'/>
      <model type='e1000'/>
      <rom file='{rom}'/>
    </interface>
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{console}' append='on'/><target type='serial' port='0'/></console>
  </devices>
</domain>
",
        name = vm.name,
        memory = vm.memory_mb,
        qemu = crate::qemu::QEMU,
        disk = disk.display(),
        mac = vm.mac,
        tap = vm.tap,
        rom = crate::qemu::PXE_ROM,
        console = console.display(),
    )
}

fn check_vm(vm: &Vm) -> Result<(), LabError> {
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let mac_ok = vm.mac.len() == 17 && vm.mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
    if !plain(&vm.name) || !plain(&vm.tap) || !plain(&vm.bridge) || !mac_ok {
        return Err(LabError::Other(format!("not a VM the lab can define: {vm:?}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// libvirtd

/// A private session libvirtd (see the module doc) in a namespace, as `nobody`, with
/// every directory in a temp dir of its own.
pub struct Libvirtd {
    netns: String,
    domains: Vec<String>,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

impl Libvirtd {
    /// Start it in `netns` and wait (up to 20 s) until it answers.
    pub fn start(netns: &str) -> Result<Libvirtd, LabError> {
        let dir =
            tempfile::Builder::new().prefix("ramboot-libvirt-").tempdir().map_err(|e| LabError::file("/tmp", e))?;
        let root = dir.path().to_path_buf();
        for sub in ["config/libvirt", "run", "cache", "data", "home", "vms"] {
            let path = root.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| LabError::file(&path, e))?;
        }
        let write = |name: &str, text: String| {
            let path = root.join(name);
            std::fs::write(&path, text).map_err(|e| LabError::file(&path, e))
        };
        // Errors and warnings only: libvirtd's info level logs every API call.
        write(
            "config/libvirt/libvirtd.conf",
            format!("log_outputs = \"3:file:{}\"\n", root.join("libvirtd.log").display()),
        )?;
        // QEMU's output to a file of its own, not through virtlogd (another daemon).
        write("config/libvirt/qemu.conf", "stdio_handler = \"file\"\n".into())?;
        chown_tree(&root)?;
        // The temp dir is 0700; nobody must reach its own directories.
        set_mode(&root, 0o755)?;

        let xdg = |sub: &str| root.join(sub).display().to_string();
        let program: Vec<String> = vec![
            crate::harness::tool(SETPRIV),
            format!("--reuid={DAEMON_ID}"),
            format!("--regid={DAEMON_ID}"),
            "--clear-groups".into(),
            "env".into(),
            "-i".into(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("HOME={}", xdg("home")),
            format!("XDG_CONFIG_HOME={}", xdg("config")),
            format!("XDG_RUNTIME_DIR={}", xdg("run")),
            format!("XDG_CACHE_HOME={}", xdg("cache")),
            format!("XDG_DATA_HOME={}", xdg("data")),
            crate::harness::tool(LIBVIRTD),
        ];
        // `ip netns exec`, setpriv and env each exec the next: this PID is libvirtd's.
        let mut cmd = in_ns(netns, &program);
        let mut proc = spawn_logged(&mut cmd, "libvirtd", &root.join("libvirtd.out"))?;
        let mut libvirtd = Libvirtd { netns: netns.into(), domains: vec![], proc: None, dir };
        let up = || libvirtd.socket().exists() && libvirtd.virsh(&["version"]).is_ok();
        let started = wait_started(&mut proc, 20, up, || libvirtd.logs());
        libvirtd.proc = Some(proc);
        started.map(|()| libvirtd)
    }

    /// Its directory (configuration, sockets, logs, the domains' disks and consoles).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("run/libvirt/libvirt-sock")
    }

    /// The URI its clients (virsh, sushy) use.
    pub fn uri(&self) -> String {
        format!("qemu:///session?socket={}", self.socket().display())
    }

    /// libvirtd's own log and output, and each domain's QEMU log.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (name, path) in
            [("libvirtd.log", self.dir().join("libvirtd.log")), ("libvirtd.out", self.dir().join("libvirtd.out"))]
        {
            text.push_str(&format!("--- {name}\n{}\n", crate::logs::tail(&crate::logs::read_lossy(&path), 30)));
        }
        for name in &self.domains {
            let path = self.dir().join(format!("cache/libvirt/qemu/log/{name}.log"));
            text.push_str(&format!("--- QEMU {name}\n{}\n", crate::logs::tail(&crate::logs::read_lossy(&path), 10)));
        }
        text
    }

    /// `virsh -c <uri> args…`; its output.
    pub fn virsh(&self, args: &[&str]) -> Result<String, LabError> {
        let out = Command::new(crate::harness::tool(VIRSH))
            .arg("-c")
            .arg(self.uri())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::spawn("virsh (apt-get install libvirt-clients)", e))?;
        if !out.status.success() {
            let command = format!("virsh {}", args.join(" "));
            return Err(LabError::Failed { command, detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Define `vm` (shut off): its tap on its bridge, an empty 16 MiB disk, the
    /// console in this daemon's directory.
    pub fn define(&mut self, vm: &Vm) -> Result<Domain, LabError> {
        check_vm(vm)?;
        let id = DAEMON_ID.to_string();
        ip_in(&self.netns, &["tuntap", "add", "dev", &vm.tap, "mode", "tap", "user", &id, "group", &id])?;
        ip_in(&self.netns, &["link", "set", &vm.tap, "master", &vm.bridge])?;
        ip_in(&self.netns, &["link", "set", &vm.tap, "up"])?;
        let vms = self.dir().join("vms");
        let (disk, console, xml) = (
            vms.join(format!("{}.img", vm.name)),
            vms.join(format!("{}-console.log", vm.name)),
            vms.join(format!("{}.xml", vm.name)),
        );
        let file = File::create(&disk).map_err(|e| LabError::file(&disk, e))?;
        file.set_len(16 << 20).map_err(|e| LabError::file(&disk, e))?;
        std::fs::write(&xml, domain_xml(vm, &disk, &console)).map_err(|e| LabError::file(&xml, e))?;
        chown_tree(&vms)?;
        self.virsh(&["define", &xml.display().to_string()])?;
        self.domains.push(vm.name.clone());
        let uuid = self.virsh(&["domuuid", &vm.name])?;
        Ok(Domain { name: vm.name.clone(), uuid, mac: vm.mac.clone(), console })
    }

    /// The PID of a running domain's QEMU (libvirt's pid file in our directory).
    fn qemu_pid(&self, name: &str) -> Option<i32> {
        let path = self.dir().join(format!("run/libvirt/qemu/run/{name}.pid"));
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("libvirtd ({}) logged:\n{}", self.uri(), self.logs());
        }
        for name in self.domains.clone() {
            let pid = self.qemu_pid(&name);
            let _ = self.virsh(&["destroy", &name]);
            let _ = self.virsh(&["undefine", &name]);
            // A QEMU that outlived `destroy` (libvirtd stuck): ours by its pid file,
            // and still a QEMU.
            if let Some(pid) = pid {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.starts_with("qemu") {
                    eprintln!("QEMU of domain {name} (PID {pid}) outlived virsh destroy; killing it");
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        if let Some(proc) = self.proc.take() {
            proc.stop(Duration::from_secs(5));
        }
    }
}

/// Give `path` and everything under it to [`DAEMON_ID`].
fn chown_tree(path: &Path) -> Result<(), LabError> {
    std::os::unix::fs::chown(path, Some(DAEMON_ID), Some(DAEMON_ID)).map_err(|e| LabError::file(path, e))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| LabError::file(path, e))? {
            chown_tree(&entry.map_err(|e| LabError::file(path, e))?.path())?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| LabError::file(path, e))
}

/// Start `cmd` (stdin from /dev/null, output to `log`) as a [`Proc`] named `name`.
fn spawn_logged(cmd: &mut Command, name: &str, log: &Path) -> Result<Proc, LabError> {
    let out = File::create(log).map_err(|e| LabError::file(log, e))?;
    let err = out.try_clone().map_err(|e| LabError::file(log, e))?;
    let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|e| LabError::spawn(name, e))?;
    Ok(Proc::new(name, child))
}

/// Wait up to `secs` until `ready`, failing with `logs` if the process exits first.
fn wait_started(
    proc: &mut Proc,
    secs: u64,
    ready: impl Fn() -> bool,
    logs: impl Fn() -> String,
) -> Result<(), LabError> {
    let name = proc.name().to_string();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = proc.try_wait() {
            return Err(LabError::Failed { command: name, detail: format!("exited ({status}): {}", logs()) });
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout { what: format!("{name} starting"), secs, detail: format!(": {}", logs()) });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------
// sushy-emulator

/// Where and how to run sushy-emulator (no Debug: it holds a password).
#[derive(Clone)]
pub struct SushyOptions {
    pub netns: String,
    /// An address in the namespace (a bridge address, or 127.0.0.1 there).
    pub listen: SocketAddr,
    pub libvirt_uri: String,
    /// The one user its htpasswd file knows.
    pub username: String,
    pub password: String,
    /// For its configuration, htpasswd file and log.
    pub dir: PathBuf,
    /// Serve https with this certificate and key (PEM files), not http.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running sushy-emulator with basic auth; stopped by PID when dropped.
pub struct Sushy {
    proc: Option<Proc>,
    base_url: String,
    log: PathBuf,
}

impl Sushy {
    /// Start it and wait (up to 30 s) until it serves.
    pub fn start(opts: &SushyOptions) -> Result<Sushy, LabError> {
        std::fs::create_dir_all(&opts.dir).map_err(|e| LabError::file(&opts.dir, e))?;
        let htpasswd = opts.dir.join("sushy.htpasswd");
        let line = format!("{}:{}\n", opts.username, bcrypt_hash(&opts.password)?);
        std::fs::write(&htpasswd, line).map_err(|e| LabError::file(&htpasswd, e))?;
        let conf = opts.dir.join("sushy.conf");
        let mut text = format!(
            "SUSHY_EMULATOR_LISTEN_IP = {ip:?}\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_LIBVIRT_URI = {uri:?}\nSUSHY_EMULATOR_AUTH_FILE = {auth:?}\n",
            ip = opts.listen.ip().to_string(),
            port = opts.listen.port(),
            uri = opts.libvirt_uri,
            auth = htpasswd.display().to_string(),
        );
        if let Some((cert, key)) = &opts.tls {
            text.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = {:?}\nSUSHY_EMULATOR_SSL_KEY = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ));
        }
        std::fs::write(&conf, text).map_err(|e| LabError::file(&conf, e))?;
        let log = opts.dir.join("sushy.log");
        let program = [crate::harness::tool(SUSHY_EMULATOR), "--config".into(), conf.display().to_string()];
        let mut cmd = in_ns(&opts.netns, &program);
        // Its state (a SQLite file) goes under TMPDIR: ours, not /tmp's.
        cmd.env("TMPDIR", &opts.dir);
        let mut proc = spawn_logged(&mut cmd, "sushy-emulator", &log)?;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let serving = || crate::logs::read_lossy(&log).contains(&format!("Running on {scheme}://"));
        let started = wait_started(&mut proc, 30, serving, || crate::logs::read_lossy(&log));
        let sushy = Sushy { proc: Some(proc), base_url: format!("{scheme}://{}", opts.listen), log };
        started.map(|()| sushy)
    }

    /// `http://ADDR:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The Redfish System URL of the domain with `uuid`.
    pub fn system_url(&self, uuid: &str) -> String {
        format!("{}/redfish/v1/Systems/{uuid}", self.base_url)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.stop(Duration::from_secs(3));
        }
        if std::thread::panicking() {
            eprintln!("sushy-emulator logged:\n{}", crate::logs::tail(&crate::logs::read_lossy(&self.log), 40));
        }
    }
}

/// A bcrypt hash of `password` (sushy accepts no other kind), made by the venv's
/// Python (sushy's own `bcrypt`); the password goes in on stdin, not the command line.
fn bcrypt_hash(password: &str) -> Result<String, LabError> {
    use std::io::Write;
    let python = format!("{SUSHY_VENV}/bin/python3");
    let script = "import bcrypt, sys; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::spawn(&python, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(password.as_bytes()).map_err(|e| LabError::spawn(&python, e))?;
    }
    let out = child.wait_with_output().map_err(|e| LabError::spawn(&python, e))?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !hash.starts_with("$2") {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(LabError::Failed { command: "bcrypt via the sushy venv's python3".into(), detail });
    }
    Ok(hash)
}

// ---------------------------------------------------------------------------------
// Everything together

/// A BMC for a test: a private libvirtd with `vms` defined (shut off) and
/// sushy-emulator in front of it with basic auth. Fields drop in order: sushy first.
pub struct Bmc {
    pub sushy: Sushy,
    pub libvirtd: Libvirtd,
    pub domains: Vec<Domain>,
}

impl Bmc {
    /// [`Bmc::start`] serving https with a fresh self-signed certificate (made by
    /// `openssl` in `dir`); also returns that certificate's SHA-256 fingerprint
    /// (hex pairs joined by colons), as an operator reads it off the BMC.
    pub fn start_tls(
        netns: &str,
        listen: SocketAddr,
        (username, password): (&str, &str),
        vms: &[Vm],
        dir: &Path,
    ) -> Result<(Bmc, String), LabError> {
        std::fs::create_dir_all(dir).map_err(|e| LabError::file(dir, e))?;
        let (cert, key) = (dir.join("bmc-cert.pem"), dir.join("bmc-key.pem"));
        let run = |args: &[&str]| -> Result<String, LabError> {
            let out = Command::new("openssl").args(args).output().map_err(|e| LabError::spawn("openssl", e))?;
            if !out.status.success() {
                let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(LabError::Failed { command: format!("openssl {}", args.join(" ")), detail });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
        let subject = format!("/CN={}", listen.ip());
        run(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject, "-keyout", &key_s,
            "-out", &cert_s,
        ])?;
        let printed = run(&["x509", "-in", &cert_s, "-noout", "-fingerprint", "-sha256"])?;
        let fingerprint = printed.trim().rsplit('=').next().unwrap_or_default().to_ascii_lowercase();
        let bmc = Bmc::launch(netns, listen, (username, password), vms, dir, Some((cert, key)))?;
        Ok((bmc, fingerprint))
    }

    /// Start it all in `netns`, sushy listening on `listen`, its files in `dir`.
    pub fn start(
        netns: &str,
        listen: SocketAddr,
        (username, password): (&str, &str),
        vms: &[Vm],
        dir: &Path,
    ) -> Result<Bmc, LabError> {
        Bmc::launch(netns, listen, (username, password), vms, dir, None)
    }

    fn launch(
        netns: &str,
        listen: SocketAddr,
        (username, password): (&str, &str),
        vms: &[Vm],
        dir: &Path,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> Result<Bmc, LabError> {
        let mut libvirtd = Libvirtd::start(netns)?;
        let domains = vms.iter().map(|vm| libvirtd.define(vm)).collect::<Result<Vec<_>, _>>()?;
        let opts = SushyOptions {
            netns: netns.into(),
            listen,
            libvirt_uri: libvirtd.uri(),
            username: username.into(),
            password: password.into(),
            dir: dir.into(),
            tls,
        };
        let sushy = Sushy::start(&opts)?;
        Ok(Bmc { sushy, libvirtd, domains })
    }

    /// Domain `i`'s Redfish System URL.
    pub fn system_url(&self, i: usize) -> String {
        self.sushy.system_url(&self.domains[i].uuid)
    }

    /// Whether libvirt says domain `i` is running (to check the BMC against).
    pub fn domain_running(&self, i: usize) -> Result<bool, LabError> {
        Ok(self.libvirtd.virsh(&["domstate", &self.domains[i].name])? == "running")
    }
}

/// The lab of `test` (`None`: skipped, see [`Lab::for_test`]) needing QEMU, the
/// iPXE ROM, libvirt and sushy-tools ([`TOOLS`]) and `more`, with a namespace
/// `rb<tag><pid>` holding a bridge `<tag><pid>br` at `addr/24`: where the BMC, the
/// VMs' taps and ramboot meet. Returns (lab, namespace, bridge).
pub fn lab_with_bmc_bridge(
    test: &str,
    more: &[(&str, &[&str])],
    tag: char,
    addr: &str,
) -> Option<(crate::harness::Lab, String, String)> {
    use crate::harness::{ip_in, Lab, PXE_ROM, QEMU};
    let mut tools: Vec<(&str, &[&str])> =
        vec![("qemu-system-x86_64 (qemu-system-x86)", QEMU), ("pxe-e1000.rom (ipxe-qemu)", PXE_ROM)];
    tools.extend(TOOLS);
    tools.extend(more);
    let mut lab = Lab::for_test(test, &tools)?;
    let pid = std::process::id();
    let ns = lab.netns(&format!("rb{tag}{pid}"));
    let bridge = format!("{tag}{pid}br");
    ip_in(&ns, &["link", "add", "name", &bridge, "type", "bridge", "forward_delay", "0"]);
    ip_in(&ns, &["addr", "add", &format!("{addr}/24"), "dev", &bridge]);
    ip_in(&ns, &["link", "set", &bridge, "up"]);
    Some((lab, ns, bridge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_boot_from_disk_with_the_nic_on_our_tap() {
        let vm = Vm {
            name: "rb1".into(),
            mac: "52:54:00:00:00:01".into(),
            bridge: "br0".into(),
            tap: "tap0".into(),
            memory_mb: 256,
        };
        let xml = domain_xml(&vm, Path::new("/d/rb1.img"), Path::new("/d/rb1-console.log"));
        assert!(xml.contains("<domain type='qemu'>"), "TCG: {xml}");
        assert!(xml.contains("<target dev='tap0' managed='no'/>"), "{xml}");
        assert!(xml.contains("<rom file='/usr/lib/ipxe/qemu/pxe-e1000.rom'/>"), "{xml}");
        assert_eq!(xml.matches("<boot order=").count(), 1, "only the disk is bootable: {xml}");
        assert!(check_vm(&vm).is_ok());
        assert!(check_vm(&Vm { name: "a'b".into(), ..vm.clone() }).is_err());
        assert!(check_vm(&Vm { mac: "52:54:00:00:00:0'".into(), ..vm }).is_err());
    }
}
