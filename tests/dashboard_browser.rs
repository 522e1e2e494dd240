//! The dashboard in a real headless Chromium, driven over WebDriver: log in, the
//! fleet page, filters kept in the URL, a row changing live while its node boots,
//! a node's boot timeline with its failed phase, a bulk maintenance with its
//! confirmation, a read-only session without controls, forged actions refused,
//! and every page read with JavaScript off. axe-core checks each page against
//! WCAG 2 A/AA; screenshots go to `target/test-artifacts/<test>/`.

mod common;

use common::browser::{keys, Browser, Options};
use common::TestServer;
use ramboot_core::node::NodeState;
use ramboot_lab::seed::{fate, seed_fleet, Fate};
use std::time::Duration;

const NODES: u32 = 60;
const WAIT: Duration = Duration::from_secs(15);

fn seeded() -> (TestServer, Vec<i64>) {
    let s = TestServer::start();
    let now = ramboot::clock::now_ms();
    let ids = s.handle.block_on(seed_fleet(&s.store, 0, NODES, "tiny", now)).expect("seeding the fleet");
    (s, ids)
}

/// Seeded nodes with this fate, by id.
fn with_fate(ids: &[i64], wanted: Fate) -> Vec<i64> {
    ids.iter().zip(0..).filter(|(_, i)| fate(*i) == wanted).map(|(id, _)| *id).collect()
}

/// Log in through the login page, typing the token as a person would.
fn log_in(b: &Browser, s: &TestServer, token: &str) {
    b.goto(&s.url("/ui/"));
    b.wait_until(WAIT, "the login page", |b| b.url().contains("/ui/login?next="));
    b.find("#token").send_keys(&format!("{token}{}", keys::ENTER));
    b.wait_until(WAIT, "the fleet page after login", |b| b.url().ends_with("/ui/"));
    b.wait_for("main h1", WAIT);
}

/// The text of the first element matching `css`, read in one step: a live update
/// may replace the element between a find and a read.
fn text_of(b: &Browser, css: &str) -> String {
    let text =
        b.execute("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", &[css.into()]);
    text.as_str().unwrap_or_default().trim().to_string()
}

/// Wait for the page an action lands on to show a flash containing `expected`
/// (the page before it may still show an older one for a moment).
fn flash_saying(b: &Browser, expected: &str) -> String {
    b.wait_until(WAIT, &format!("a flash saying {expected:?}"), |b| text_of(b, ".flash").contains(expected));
    text_of(b, ".flash")
}

/// The number of table rows on the page.
fn rows(b: &Browser) -> usize {
    b.find_all("#nodes tbody tr").len()
}

/// A POST to /ui/actions from inside the page (with its cookie, from its origin),
/// with the form fields given; the status it got.
fn forged_post(b: &Browser, fields: &str) -> u64 {
    let status = b.execute_async(
        "const done = arguments[arguments.length - 1];
         fetch('/ui/actions', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                body: arguments[0], redirect: 'manual'})
           .then(r => done(r.status)).catch(e => done(String(e)));",
        &[serde_json::Value::String(fields.to_string())],
    );
    status.as_u64().unwrap_or_else(|| panic!("the forged POST did not get a status: {status}"))
}

#[test]
fn an_operator_watches_filters_and_acts_in_a_real_browser() {
    // A tall window: the screenshots show whole pages (README uses two of them).
    let Some(b) = Browser::start_with("dashboard_browser", Options { window: (1440, 1300), ..Options::default() })
    else {
        return;
    };
    let (s, ids) = seeded();
    let failed = with_fate(&ids, Fate::FailedLoading).len() + with_fate(&ids, Fate::FailedBooting).len();

    b.goto(&s.url("/ui/login"));
    b.save_screenshot("login");
    b.assert_accessible("login");
    log_in(&b, &s, &s.admin);
    let session = b.cookies().into_iter().find(|c| c["name"] == "ramboot_session").expect("a session cookie");
    assert_eq!(
        (session["httpOnly"].as_bool(), session["sameSite"].as_str()),
        (Some(true), Some("Strict")),
        "{session}"
    );
    assert!(session["expiry"].as_u64().is_some(), "the cookie expires: {session}");

    // Fleet: counts, the failed nodes first with their reason, the phase chart.
    let failed_count = b.find("a[href='/ui/nodes?state=failed'] .n").text();
    assert_eq!(failed_count, failed.to_string());
    let attention = b.find("[data-live=attention]").text();
    assert!(attention.contains("image digest mismatch"), "{attention}");
    for phase in ["booting", "stage1", "loading", "handoff"] {
        assert!(b.find("[data-live=phases]").text().contains(phase), "{phase} in the chart");
    }
    assert!(b.find_all("#feed li").len() >= 10, "the event feed");
    b.save_screenshot("fleet");
    b.assert_accessible("fleet");
    // From a small laptop to a 4K wall display: nothing overflows sideways.
    for (name, width, height) in [("laptop", 1280, 800), ("wall", 3840, 2160)] {
        b.set_window(width, height);
        for page in ["/ui/", "/ui/nodes"] {
            b.goto(&s.url(page));
            let overflow = b.execute("return document.documentElement.scrollWidth - window.innerWidth", &[]);
            assert!(overflow.as_i64().is_some_and(|o| o <= 0), "{page} at {width}x{height} overflows by {overflow}px");
        }
        b.save_screenshot(&format!("nodes-{name}"));
    }
    b.set_window(1440, 1300);
    b.goto(&s.url("/ui/"));

    // The first Tab reaches the skip link: the page is usable from the keyboard.
    b.refresh();
    b.send_keys_active(keys::TAB);
    assert_eq!(b.execute("return document.activeElement.textContent", &[]), "Skip to content");

    // Nodes: a filter chosen in the form lands in the URL and survives a reload.
    b.find("nav a[href='/ui/nodes']").click();
    b.wait_for("#nodes", WAIT);
    assert_eq!(rows(&b), NODES as usize);
    b.find("#f-state option[value=failed]").click();
    b.find("form.filters button[type=submit]").click();
    b.wait_until(WAIT, "the filtered URL", |b| b.url().contains("state=failed"));
    assert_eq!(rows(&b), failed);
    b.refresh();
    b.wait_for("#nodes", WAIT);
    assert_eq!(rows(&b), failed, "the URL holds the filter");
    assert!(b.find("#nodes tbody").text().contains("image digest mismatch"), "state with its reason");
    b.save_screenshot("nodes-failed");
    b.assert_accessible("nodes");

    // Columns are the operator's choice, and kept in the URL too.
    b.goto(&s.url("/ui/nodes?col=hostname&col=state&col=labels&col=power&sort=hostname&dir=desc"));
    let headers: Vec<String> = b.find_all("#nodes thead th").into_iter().map(|h| h.text()).collect();
    assert_eq!(headers[1..], ["Hostname", "State", "Labels", "Power"], "{headers:?}");

    // Live: a new node boots over the real boot API (DHCP lease, iPXE script, the
    // agent's hello and reports), and its row follows each phase without a reload.
    let mac = "52:54:00:aa:00:01";
    s.lease(mac);
    b.goto(&s.url(&format!("/ui/nodes?q={mac}")));
    let row = "#nodes tbody tr";
    b.wait_for(row, WAIT);
    assert_eq!(text_of(&b, &format!("{row} .state")), "discovered");
    b.wait_until(WAIT, "the live stream to open", |b| text_of(b, "#live-status") == "Live");
    b.execute("window.__sameDocument = true", &[]);
    let state_becomes = |state: &str| {
        b.wait_until(WAIT, &format!("the row to show {state}"), |b| text_of(b, &format!("{row} .state")) == state);
    };
    let (status, script) = common::call(common::agent().get(&s.url(&format!("/boot.ipxe?mac={mac}"))));
    assert_eq!(status, 200, "{script}");
    state_becomes("booting");
    let token = common::token_of(&script);
    let agent_call = |path: &str, body: serde_json::Value| {
        let req = common::agent().post(&s.url(path)).set("Authorization", &format!("Bearer {token}"));
        let (status, answer) = common::send_json(req, body);
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
    };
    agent_call(
        "/boot/v1/hello",
        serde_json::json!({"cpus": 4, "memory_bytes": 8u64 << 30, "nics": [], "dmi": {"serial": "LIVE-1"}}),
    );
    state_becomes("stage1");
    for state in ["loading", "handoff", "ready"] {
        agent_call(
            "/boot/v1/events",
            serde_json::json!({"state": state, "message": format!("agent: {state}"), "progress": null}),
        );
        state_becomes(state);
    }
    assert_eq!(b.execute("return window.__sameDocument === true", &[]), true, "updated in place, not reloaded");
    b.save_screenshot("nodes-live");

    // A failed node's page: its boot as a timeline, the failed phase marked with why.
    let broken = with_fate(&ids, Fate::FailedLoading)[0];
    b.goto(&s.url(&format!("/ui/nodes?state=failed&q={}", s.handle.block_on(s.store.node(broken)).unwrap().mac)));
    b.find(&format!("#nodes tr[data-node-id='{broken}'] a")).click();
    b.wait_for("svg.timeline rect.phase-failed", WAIT);
    let boot_text = b.find("article.boot").text();
    assert!(boot_text.contains("Failed in loading") && boot_text.contains("image digest mismatch"), "{boot_text}");
    assert_eq!(b.find_all("article.boot svg.timeline rect").len(), 3, "booting, stage1, and the failed loading");
    let plan = b.find("[data-live=plan]").text();
    assert!(plan.contains("Profile tiny (revision") && plan.contains("assigned), image tiny "), "{plan}");
    b.save_screenshot("node-timeline");
    b.assert_accessible("node");

    // The reference pages.
    for (page, heading) in [
        ("profiles", "Profiles"),
        ("images", "Images"),
        ("volumes", "Volumes"),
        ("audit", "Audit trail"),
        ("tokens", "API tokens"),
    ] {
        b.goto(&s.url(&format!("/ui/{page}")));
        assert_eq!(b.find("main h1").text(), heading);
        b.save_screenshot(page);
        b.assert_accessible(page);
    }

    // Bulk maintenance on three selected rows, confirmed in the dialog.
    b.goto(&s.url("/ui/nodes?state=ready&sort=mac"));
    let chosen: Vec<String> = b
        .find_all("input.row-select")
        .into_iter()
        .take(3)
        .map(|box_| {
            box_.click();
            box_.attr("value").expect("a node id")
        })
        .collect();
    b.find("#b-reason").send_keys("rack r07 power work");
    b.find("button[value=maintenance_on]").click();
    b.wait_for("#confirm-dialog[open]", WAIT);
    assert_eq!(b.find("#confirm-text").text(), "Maintenance on: 3 nodes. Go ahead?");
    b.save_screenshot("bulk-confirm");
    b.find("#confirm-dialog button[value=ok]").click();
    flash_saying(&b, "Maintenance on: done on 3 nodes.");
    for id in &chosen {
        let node = s.handle.block_on(s.store.node(id.parse().unwrap())).unwrap();
        assert_eq!(
            (node.state, node.maintenance_reason.as_deref()),
            (NodeState::Maintenance, Some("rack r07 power work"))
        );
    }
    b.save_screenshot("bulk-done");
    let trail = b.execute_async(
        "const done = arguments[arguments.length - 1];
         fetch('/ui/audit?actor=admin').then(r => r.text()).then(done);",
        &[],
    );
    assert_eq!(trail.as_str().unwrap_or("").matches("node.maintenance").count(), 3, "audited under the admin token");

    // The confirmation page a browser without JavaScript gets (a script-made form's
    // submit() skips the dialog, as no script would have asked): accessible too.
    let csrf = b.find("header input[name=csrf]").attr("value").unwrap();
    let fields =
        serde_json::json!([["csrf", csrf], ["action", "reprovision"], ["node", chosen[0]], ["return", "/ui/nodes"]]);
    b.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/ui/actions';
         for (const [name, value] of arguments[0]) {
           const i = document.createElement('input'); i.type = 'hidden'; i.name = name; i.value = value; f.appendChild(i);
         }
         document.body.appendChild(f); f.submit();",
        &[fields],
    );
    b.wait_until(WAIT, "the confirmation page", |b| text_of(b, "main h1") == "Confirm: Reprovision");
    b.assert_accessible("confirm");
    b.find("main form a").click();
    b.wait_until(WAIT, "cancel goes back", |b| b.url().ends_with("/ui/nodes"));

    // A rollout of two selected nodes, started from the table, then paused.
    b.goto(&s.url("/ui/nodes?state=ready&sort=mac"));
    for box_ in b.find_all("input.row-select").into_iter().take(2) {
        box_.click();
    }
    b.find("#b-profile option[value=tiny]").click();
    b.find("button[value=rollout_start]").click();
    b.wait_for("#confirm-dialog[open]", WAIT);
    b.find("#confirm-dialog button[value=ok]").click();
    flash_saying(&b, "Started rollout 1: 2 node(s)");
    assert!(b.url().ends_with("/ui/rollouts"));
    b.find("#rollout-1 button[value=rollout_pause]").click();
    b.wait_for("#confirm-dialog[open]", WAIT);
    b.find("#confirm-dialog button[value=ok]").click();
    flash_saying(&b, "Pause rollout 1: ");
    b.wait_until(WAIT, "the driver to pause it", |b| {
        b.refresh();
        text_of(b, "#rollout-1 h2 .state") == "paused"
    });
    b.save_screenshot("rollouts");
    b.assert_accessible("rollouts");

    // A forged action (no CSRF token) is refused even with the admin's cookie.
    let node = &chosen[0];
    assert_eq!(forged_post(&b, &format!("action=maintenance_off&node={node}&confirmed=1")), 403);
    assert_eq!(s.handle.block_on(s.store.node(node.parse().unwrap())).unwrap().state, NodeState::Maintenance);

    // Log out, then in again with a read token: no controls, and refused anyway.
    b.find("header form[action='/ui/logout'] button").click();
    b.wait_until(WAIT, "the login page", |b| b.url().ends_with("/ui/login"));
    log_in(&b, &s, &s.reader);
    assert!(b.try_find("nav a[href='/ui/tokens']").is_none(), "no tokens page for a read session");
    b.goto(&s.url("/ui/nodes"));
    assert!(b.try_find("#bulk").is_none() && b.try_find("input.row-select").is_none());
    b.goto(&s.url(&format!("/ui/nodes/{node}")));
    assert!(b.try_find("form[action='/ui/actions']").is_none(), "no action form on a node");
    b.save_screenshot("read-only-node");
    let csrf = b.find("header input[name=csrf]").attr("value").unwrap();
    assert_eq!(forged_post(&b, &format!("csrf={csrf}&action=maintenance_off&node={node}&confirmed=1")), 403);
    assert_eq!(s.handle.block_on(s.store.node(node.parse().unwrap())).unwrap().state, NodeState::Maintenance);
}

#[test]
fn every_page_reads_and_acts_with_javascript_off() {
    let options = Options { javascript: false, ..Options::default() };
    let Some(b) = Browser::start_with("dashboard_no_js", options) else { return };
    let (s, ids) = seeded();
    log_in(&b, &s, &s.admin);
    assert!(b.find("[data-live=attention]").text().contains("image digest mismatch"));
    b.goto(&s.url("/ui/nodes?label=role%3Dk8s-master"));
    assert_eq!(rows(&b), (NODES as usize).div_ceil(10), "every tenth node is a k8s master");
    b.find("#f-q").send_keys(&format!("52:54:00:00:00:0a{}", keys::ENTER));
    b.wait_until(WAIT, "the search in the URL", |b| b.url().contains("q=52%3A54%3A00%3A00%3A00%3A0a"));
    assert_eq!(rows(&b), 1);
    b.save_screenshot("nodes-no-js");

    // No dialog without a script: the server asks on a page of its own.
    let node = with_fate(&ids, Fate::Ready)[0];
    b.goto(&s.url(&format!("/ui/nodes/{node}")));
    b.find("#a-reason").send_keys("firmware update");
    b.find("button[value=maintenance_on]").click();
    b.wait_until(WAIT, "the confirmation page", |b| text_of(b, "main h1") == "Confirm: Maintenance on");
    b.save_screenshot("confirm-no-js");
    b.find("main form button[type=submit]").click();
    flash_saying(&b, "done on 1 node");
    let state = s.handle.block_on(s.store.node(node)).unwrap();
    assert_eq!(state.maintenance_reason.as_deref(), Some("firmware update"));
}
