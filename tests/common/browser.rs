//! A real headless Chromium for the dashboard's tests, driven over W3C WebDriver by
//! a small client of our own on `ureq` (chromedriver on a free 127.0.0.1 port, one
//! session per [`Browser`]), with axe-core's accessibility checks.
//!
//! Without `chromium` or `chromedriver` a test skips, and without axe-core
//! ([`AXE`]) its checks do, with a message (in CI both fail: `.ci/run` installs
//! them). WebDriver errors panic with what the driver said: these are tests.

use base64::Engine;
use ramboot_lab::harness::{first_existing, read_lossy, skipped, tail, wait_for};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &[&str] = &["/usr/bin/chromium"];
pub const CHROMEDRIVER: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
/// axe-core's browser bundle, where `.ci/run` puts it.
pub const AXE: &str = "/opt/ramboot-ci/axe/axe.min.js";

/// The WCAG levels the accessibility checks hold pages to.
const AXE_TAGS: &[&str] = &["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
/// The key under which WebDriver passes an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Keys for `send_keys`, as WebDriver codes them (Private Use Area code points).
pub mod keys {
    pub const TAB: &str = "\u{E004}";
    pub const ENTER: &str = "\u{E007}";
    pub const ESCAPE: &str = "\u{E00C}";
}

/// How a [`Browser`] starts.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Off: the page's scripts do not run (the no-JavaScript fallbacks); WebDriver's
    /// own `execute` still works.
    pub javascript: bool,
    /// The window's size in CSS pixels (the viewport is as wide, less high).
    pub window: (u32, u32),
}

impl Default for Options {
    fn default() -> Self {
        Options { javascript: true, window: (1366, 900) }
    }
}

/// An error as WebDriver reports it (`error` is its code, e.g. "no such element").
#[derive(Debug)]
struct WdError {
    error: String,
    message: String,
}

/// One WebDriver request; the answer's `value`, or the driver's error.
fn request(agent: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> Result<Value, WdError> {
    let req = agent.request(method, url);
    let answer = match body {
        Some(body) => req.send_json(body),
        None => req.call(),
    };
    let response = match answer {
        Ok(r) => r,
        // WebDriver answers errors with a 4xx/5xx status and a JSON body saying why.
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(WdError { error: "transport".into(), message: e.to_string() }),
    };
    let mut body: Value =
        response.into_json().map_err(|e| WdError { error: "bad answer".into(), message: format!("not JSON: {e}") })?;
    let value = body.get_mut("value").map(Value::take).unwrap_or(Value::Null);
    match value.get("error").and_then(Value::as_str) {
        Some(error) => Err(WdError {
            error: error.to_string(),
            message: value.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
        }),
        None => Ok(value),
    }
}

pub struct Browser {
    test: String,
    agent: ureq::Agent,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    driver: Child,
    /// chromedriver's output, kept for the panic messages.
    log: tempfile::NamedTempFile,
}

impl Browser {
    /// A headless Chromium with [`Options::default`]; `None`: skipped (see module doc).
    pub fn start(test: &str) -> Option<Browser> {
        Browser::start_with(test, Options::default())
    }

    pub fn start_with(test: &str, options: Options) -> Option<Browser> {
        let missing = [("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)]
            .iter()
            .find(|(_, paths)| first_existing(paths).is_none())
            .map(|(name, paths)| format!("{name} is not installed (looked at {})", paths.join(", ")));
        if skipped(test, missing.as_deref()) {
            return None;
        }
        let driver_path = first_existing(CHROMEDRIVER).expect("checked above");
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        // The free port may be taken between our probe and chromedriver's bind: retry.
        let mut last_failure = String::new();
        for _ in 0..3 {
            let log = tempfile::NamedTempFile::new().expect("a temp file for chromedriver's log");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port on 127.0.0.1")
                .port();
            let out = log.reopen().expect("a handle on chromedriver's log");
            let driver = Command::new(&driver_path)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("a second handle on chromedriver's log"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", driver_path.display()));
            let mut browser =
                Browser { test: test.to_string(), agent: agent.clone(), session: String::new(), driver, log };
            match browser.driver_ready(port) {
                Ok(()) => {
                    browser.new_session(port, options);
                    return Some(browser);
                }
                // Dropping `browser` kills this chromedriver; the next try takes a new port.
                Err(why) => last_failure = why,
            }
        }
        panic!("chromedriver did not start: {last_failure}");
    }

    /// Wait (≤ 10 s) for chromedriver to say it is ready, or for it to exit.
    fn driver_ready(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = format!("http://127.0.0.1:{port}/status");
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                return Err(format!("it exited ({status}):\n{}", self.driver_log()));
            }
            if let Ok(v) = request(&self.agent, "GET", &url, None) {
                if v["ready"] == json!(true) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after 10 s:\n{}", self.driver_log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn new_session(&mut self, port: u16, options: Options) {
        let (w, h) = options.window;
        let mut chrome = json!({
            "binary": CHROMIUM[0],
            // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start;
            // --disable-dev-shm-usage: a container's /dev/shm may be tiny.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={w},{h}"), "--lang=en-US"],
        });
        if !options.javascript {
            chrome["prefs"] = json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": chrome,
            // Bounded, so a hung page fails the test instead of stalling it.
            "timeouts": { "pageLoad": 30_000, "script": 30_000, "implicit": 0 },
        }}});
        let base = format!("http://127.0.0.1:{port}/session");
        let created = request(&self.agent, "POST", &base, Some(&caps))
            .unwrap_or_else(|e| panic!("creating a Chromium session: {e:?}\n{}", self.driver_log()));
        let id = created["sessionId"].as_str().unwrap_or_else(|| panic!("no sessionId in {created}"));
        self.session = format!("{base}/{id}");
    }

    fn driver_log(&self) -> String {
        tail(&read_lossy(self.log.path()), 30)
    }

    /// A command on the session (`path` after `/session/<id>`), or the driver's error.
    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        request(&self.agent, method, &format!("{}{path}", self.session), body.as_ref())
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} failed in {}: {}: {}", self.test, e.error, e.message))
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        string(self.cmd("GET", "/url", None))
    }

    pub fn title(&self) -> String {
        string(self.cmd("GET", "/title", None))
    }

    pub fn page_source(&self) -> String {
        string(self.cmd("GET", "/source", None))
    }

    pub fn back(&self) {
        self.cmd("POST", "/back", Some(json!({})));
    }

    pub fn refresh(&self) {
        self.cmd("POST", "/refresh", Some(json!({})));
    }

    /// Resize the window (outer size, CSS pixels): a laptop, a wall display.
    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({ "width": width, "height": height })));
    }

    /// The element `css` matches; panics if none does.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.find_in("", css)
    }

    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.find_all_in("", css)
    }

    /// The element `css` matches, if one does now.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        self.try_find_in("", css)
    }

    /// Poll (every 100 ms) until `css` matches, or panic after `timeout`.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        wait_for(timeout, &format!("`{css}`"), || self.try_find(css), || self.context())
    }

    /// Poll (every 100 ms) until `done` holds, or panic after `timeout` with `what`.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut done: impl FnMut(&Browser) -> bool) {
        wait_for(timeout, what, || done(self).then_some(()), || self.context());
    }

    /// Where the page was when a wait timed out.
    fn context(&self) -> String {
        format!("at {} ({:?})", self.url(), self.title())
    }

    /// `within` is "" (the document) or `/element/<id>`.
    fn try_find_in(&self, within: &str, css: &str) -> Option<Element<'_>> {
        match self.try_cmd("POST", &format!("{within}/element"), Some(by_css(css))) {
            Ok(v) => Some(self.element(v)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("finding `{css}` in {}: {}: {}", self.test, e.error, e.message),
        }
    }

    fn find_in(&self, within: &str, css: &str) -> Element<'_> {
        self.try_find_in(within, css).unwrap_or_else(|| panic!("no element matches `{css}` {}", self.context()))
    }

    fn find_all_in(&self, within: &str, css: &str) -> Vec<Element<'_>> {
        match self.cmd("POST", &format!("{within}/elements"), Some(by_css(css))) {
            Value::Array(found) => found.into_iter().map(|v| self.element(v)).collect(),
            other => panic!("finding all `{css}`: not a list: {other}"),
        }
    }

    fn element(&self, reference: Value) -> Element<'_> {
        let id = reference[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("not an element: {reference}"));
        Element { browser: self, id: id.to_string() }
    }

    /// Run `script` as a function body with `args` (`arguments[i]`); what it returns.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Like [`Browser::execute`], but the result is what the script passes to its
    /// last argument, a callback (`arguments[arguments.length - 1]`).
    pub fn execute_async(&self, script: &str, args: &[Value]) -> Value {
        self.cmd("POST", "/execute/async", Some(json!({ "script": script, "args": args })))
    }

    /// Type into whatever has the focus.
    pub fn send_keys_active(&self, text: &str) {
        self.element(self.cmd("GET", "/element/active", None)).send_keys(text);
    }

    pub fn accept_alert(&self) {
        self.cmd("POST", "/alert/accept", Some(json!({})));
    }

    pub fn dismiss_alert(&self) {
        self.cmd("POST", "/alert/dismiss", Some(json!({})));
    }

    /// The page's cookies as WebDriver describes them (`name`, `value`, `httpOnly`…).
    pub fn cookies(&self) -> Vec<Value> {
        match self.cmd("GET", "/cookie", None) {
            Value::Array(cookies) => cookies,
            other => panic!("cookies: not a list: {other}"),
        }
    }

    /// Set a cookie (at least `name` and `value`) for the current page's domain.
    pub fn add_cookie(&self, cookie: Value) {
        self.cmd("POST", "/cookie", Some(json!({ "cookie": cookie })));
    }

    pub fn delete_cookies(&self) {
        self.cmd("DELETE", "/cookie", None);
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = base64::engine::general_purpose::STANDARD
            .decode(string(self.cmd("GET", "/screenshot", None)))
            .expect("a screenshot in base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A screenshot kept for looking at after the run:
    /// `<target>/test-artifacts/<test>/<name>.png`. Returns its path.
    pub fn save_screenshot(&self, name: &str) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
        // A relative target dir is the workspace's, as cargo takes it.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(target)
            .join("test-artifacts")
            .join(&self.test)
            .join(format!("{name}.png"));
        self.screenshot(&path);
        path
    }

    /// axe-core's WCAG 2.1 A/AA violations on the current page, one line each:
    /// `id: help (n nodes: targets)`. `None`: skipped, axe-core is not installed.
    pub fn axe_violations(&self) -> Option<Vec<String>> {
        let missing = (!Path::new(AXE).exists()).then(|| format!("axe-core is not installed at {AXE}"));
        if skipped(&self.test, missing.as_deref()) {
            return None;
        }
        // Injected on each call: a navigation drops it with the page.
        if self.execute("return typeof axe", &[]) != json!("object") {
            let source = std::fs::read_to_string(AXE).unwrap_or_else(|e| panic!("reading {AXE}: {e}"));
            self.execute(&source, &[]);
        }
        let result = self.execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { runOnly: { type: 'tag', values: arguments[0] } })
                .then(r => done(r.violations.map(v => ({
                    id: v.id, help: v.help, targets: v.nodes.map(n => n.target.join(' ')) }))))
                .catch(e => done({ error: String(e) }));",
            &[json!(AXE_TAGS)],
        );
        let Value::Array(violations) = result else { panic!("axe.run failed: {result}") };
        Some(violations.iter().map(axe_line).collect())
    }

    /// Panic, with a screenshot, if axe-core finds violations on the page (`page`
    /// names it in the message and the screenshot's file).
    pub fn assert_accessible(&self, page: &str) {
        let Some(violations) = self.axe_violations() else { return };
        if !violations.is_empty() {
            let shot = self.save_screenshot(&format!("axe-{page}"));
            panic!("{page} has accessibility violations (see {}):\n{}", shot.display(), violations.join("\n"));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session first: that closes Chromium, which killing chromedriver would not.
        if !self.session.is_empty() {
            let _ = request(&self.agent, "DELETE", &self.session, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One line of [`Browser::axe_violations`].
fn axe_line(v: &Value) -> String {
    let targets: Vec<&str> = v["targets"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let shown = targets.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    let more = if targets.len() > 3 { ", …" } else { "" };
    format!("{}: {} ({} nodes: {shown}{more})", string(v["id"].clone()), string(v["help"].clone()), targets.len())
}

fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

fn string(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => panic!("expected a string from WebDriver, got {other}"),
    }
}

/// An element of the page, valid until the page changes.
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl<'b> Element<'b> {
    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        self.browser.cmd(method, &format!("/element/{}{what}", self.id), body)
    }

    /// The element as an argument of [`Browser::execute`].
    pub fn json(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    pub fn click(&self) {
        self.cmd("POST", "/click", Some(json!({})));
    }

    /// Type `text` (which may hold [`keys`]) into the element.
    pub fn send_keys(&self, text: &str) {
        self.cmd("POST", "/value", Some(json!({ "text": text })));
    }

    pub fn clear(&self) {
        self.cmd("POST", "/clear", Some(json!({})));
    }

    /// The rendered text.
    pub fn text(&self) -> String {
        string(self.cmd("GET", "/text", None))
    }

    pub fn attr(&self, name: &str) -> Option<String> {
        self.cmd("GET", &format!("/attribute/{name}"), None).as_str().map(str::to_string)
    }

    /// A DOM property (e.g. `value`, `checked`), as JSON.
    pub fn prop(&self, name: &str) -> Value {
        self.cmd("GET", &format!("/property/{name}"), None)
    }

    pub fn is_displayed(&self) -> bool {
        self.cmd("GET", "/displayed", None) == json!(true)
    }

    pub fn find(&self, css: &str) -> Element<'b> {
        self.browser.find_in(&format!("/element/{}", self.id), css)
    }

    pub fn find_all(&self, css: &str) -> Vec<Element<'b>> {
        self.browser.find_all_in(&format!("/element/{}", self.id), css)
    }
}
