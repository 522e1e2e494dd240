//! The dashboard over plain HTTP: login and the session cookie, CSRF and origin
//! checks, roles, revocation, embedded assets, and a 500-node fleet that renders
//! and filters. What a browser does with the pages is `tests/dashboard_browser.rs`.

mod common;

use common::TestServer;
use ramboot::store::NodeChange;
use ramboot_core::node::{MacAddr, NodeState};
use std::collections::BTreeMap;

/// An agent that shows redirects instead of following them.
fn browserless() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(20)).redirects(0).max_idle_connections(0).build()
}

struct Answer {
    status: u16,
    location: String,
    cookies: Vec<String>,
    csp: String,
    cache: String,
    body: String,
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let header = |name: &str| r.header(name).unwrap_or("").to_string();
    Answer {
        status: r.status(),
        location: header("location"),
        cookies: r.all("set-cookie").into_iter().map(str::to_string).collect(),
        csp: header("content-security-policy"),
        cache: header("cache-control"),
        body: r.into_string().unwrap_or_default(),
    }
}

fn get(s: &TestServer, path: &str, session: Option<&str>) -> Answer {
    let mut req = browserless().get(&s.url(path));
    if let Some(id) = session {
        req = req.set("Cookie", &format!("ramboot_session={id}"));
    }
    answer(req.call())
}

fn post(s: &TestServer, path: &str, session: Option<&str>, origin: Option<&str>, form: &[(&str, &str)]) -> Answer {
    let mut req = browserless().post(&s.url(path));
    if let Some(id) = session {
        req = req.set("Cookie", &format!("ramboot_session={id}"));
    }
    if let Some(o) = origin {
        req = req.set("Origin", o);
    }
    answer(req.send_form(form))
}

/// Log in with `token`; the session id from the cookie.
fn login(s: &TestServer, token: &str) -> String {
    let a = post(s, "/ui/login", None, Some(&s.base), &[("token", token), ("next", "/ui/nodes")]);
    assert_eq!((a.status, a.location.as_str()), (303, "/ui/nodes"), "{}", a.body);
    let cookie = a.cookies.iter().find(|c| c.starts_with("ramboot_session=")).expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    cookie["ramboot_session=".len()..].split(';').next().unwrap().to_string()
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

fn mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, b[1], b[2], b[3]])
}

#[test]
fn a_session_is_opened_with_a_token_and_ends_with_it() {
    let s = TestServer::start();
    // Not logged in: every page sends the browser to the login page, and back after.
    let a = get(&s, "/ui/nodes?state=failed", None);
    assert_eq!((a.status, a.location.as_str()), (303, "/ui/login?next=%2Fui%2Fnodes%3Fstate%3Dfailed"));
    let a = post(&s, "/ui/login", None, None, &[("token", "not-a-token"), ("next", "/ui/")]);
    assert_eq!(a.status, 401);
    assert!(a.body.contains("not a token this server knows"), "{}", a.body);
    // A login never sends the browser to another site.
    let a = post(&s, "/ui/login", None, None, &[("token", &s.admin), ("next", "//evil.example/")]);
    assert_eq!((a.status, a.location.as_str()), (303, "/ui/"));

    let session = login(&s, &s.admin);
    let fleet = get(&s, "/ui/", Some(&session));
    assert_eq!(fleet.status, 200, "{}", fleet.body);
    assert!(fleet.body.contains("<h1>Fleet</h1>") && fleet.body.contains("admin"), "{}", fleet.body);
    assert!(fleet.csp.contains("script-src 'self'") && fleet.cache == "no-store", "{} / {}", fleet.csp, fleet.cache);

    // The assets the page names are served from the binary, cached for ever; an
    // old build's path is not found.
    for asset in ["ui.css", "ui.js"] {
        let at = fleet.body.find(&format!("/{asset}\"")).expect("the page names its asset");
        let start = fleet.body[..at].rfind("\"/ui/assets/").expect("a versioned path") + 1;
        let path = &fleet.body[start..at + asset.len() + 1];
        let a = get(&s, path, None);
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.cache, "public, max-age=31536000, immutable");
        assert!(!a.body.is_empty());
        assert_eq!(get(&s, &format!("/ui/assets/0000000000000000/{asset}"), None).status, 404);
    }

    // Logging out needs the session's own form.
    let csrf = csrf_of(&fleet.body);
    assert_eq!(post(&s, "/ui/logout", Some(&session), Some(&s.base), &[("csrf", "forged")]).status, 403);
    let a = post(&s, "/ui/logout", Some(&session), Some(&s.base), &[("csrf", &csrf)]);
    assert_eq!((a.status, a.location.as_str()), (303, "/ui/login"));
    assert_eq!(get(&s, "/ui/", Some(&session)).status, 303, "logged out");

    // Revoking the token ends its sessions at once.
    let created = common::send_json(
        common::agent().post(&s.url("/api/v1/tokens")).set("Authorization", &s.admin_auth()),
        serde_json::json!({"name": "ops-laptop", "role": "read"}),
    );
    assert_eq!(created.0, 201, "{}", created.1);
    let token: serde_json::Value = serde_json::from_str(&created.1).unwrap();
    let session = login(&s, token["token"].as_str().unwrap());
    assert_eq!(get(&s, "/ui/nodes", Some(&session)).status, 200);
    let revoked =
        common::call(common::agent().delete(&s.url("/api/v1/tokens/ops-laptop")).set("Authorization", &s.admin_auth()));
    assert_eq!(revoked.0, 204);
    assert_eq!(get(&s, "/ui/nodes", Some(&session)).status, 303, "the session ended with its token");
}

#[test]
fn actions_need_the_admin_role_the_sessions_csrf_token_and_this_origin() {
    let s = TestServer::start();
    let node = s.handle.block_on(s.store.ensure_node(mac(1), 1)).unwrap();
    let id = node.id.to_string();
    let admin = login(&s, &s.admin);
    let page = get(&s, &format!("/ui/nodes/{id}"), Some(&admin));
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    let maintenance = |session: &str, csrf: &str, origin: Option<&str>| {
        post(
            &s,
            "/ui/actions",
            Some(session),
            origin,
            &[
                ("csrf", csrf),
                ("action", "maintenance_on"),
                ("node", &id),
                ("reason", "disk swap"),
                ("confirmed", "1"),
                ("return", "/ui/nodes"),
            ],
        )
    };
    assert_eq!(maintenance(&admin, "", Some(&s.base)).status, 403, "no CSRF token");
    assert_eq!(maintenance(&admin, "0123456789abcdef0123456789abcdef", Some(&s.base)).status, 403, "a forged one");
    assert_eq!(maintenance(&admin, &csrf, Some("http://evil.example")).status, 403, "another site");
    assert_eq!(s.handle.block_on(s.store.node(node.id)).unwrap().state, NodeState::Discovered, "nothing changed");

    // A read session sees no action controls, and its forms are refused anyway.
    let reader = login(&s, &s.reader);
    let read_page = get(&s, &format!("/ui/nodes/{id}"), Some(&reader));
    assert!(!read_page.body.contains("/ui/actions"), "a read session is offered no action");
    assert!(!get(&s, "/ui/nodes", Some(&reader)).body.contains("id=\"bulk\""));
    assert_eq!(get(&s, "/ui/tokens", Some(&reader)).status, 403);
    assert_eq!(maintenance(&reader, &csrf_of(&read_page.body), Some(&s.base)).status, 403);

    // Unconfirmed (no script asked): a confirmation page that carries the form on.
    let a = post(
        &s,
        "/ui/actions",
        Some(&admin),
        Some(&s.base),
        &[
            ("csrf", &csrf),
            ("action", "maintenance_on"),
            ("node", &id),
            ("reason", "disk swap"),
            ("return", "/ui/nodes"),
        ],
    );
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("Confirm: Maintenance on") && a.body.contains("name=\"confirmed\" value=\"1\""),
        "{}",
        a.body
    );

    let done = maintenance(&admin, &csrf, Some(&s.base));
    assert_eq!((done.status, done.location.as_str()), (303, "/ui/nodes"), "{}", done.body);
    let flash = done.cookies.iter().find(|c| c.starts_with("ramboot_flash=")).expect("the outcome rides the redirect");
    assert!(flash.contains("HttpOnly"));
    let node = s.handle.block_on(s.store.node(node.id)).unwrap();
    assert_eq!((node.state, node.maintenance_reason.as_deref()), (NodeState::Maintenance, Some("disk swap")));
    // Audited under the token's name, as an API call would be.
    let trail = common::call(
        common::agent().get(&s.url(&format!("/api/v1/audit?node={id}"))).set("Authorization", &s.admin_auth()),
    );
    assert!(trail.1.contains("\"name\":\"admin\"") && trail.1.contains("node.maintenance"), "{}", trail.1);
}

#[test]
fn five_hundred_nodes_render_filter_and_page() {
    let s = TestServer::start();
    s.handle.block_on(async {
        for i in 0..500u32 {
            let node = s.store.ensure_node(mac(i), 1_000 + i64::from(i)).await.unwrap();
            let labels = BTreeMap::from([("rack".to_string(), format!("r{}", i % 10))]);
            let change = NodeChange { labels: Some(labels), ..NodeChange::default() };
            s.store.update_node(node.id, &change, &common::operator(), 2_000).await.unwrap();
        }
    });
    let session = login(&s, &s.reader);
    let all = get(&s, "/ui/nodes?per=500", Some(&session));
    assert_eq!(all.status, 200);
    assert_eq!(all.body.matches("<tr data-node-id=").count(), 500);
    assert!(all.body.contains("1–500 of 500 nodes"), "a summary line");
    let rack = get(&s, "/ui/nodes?label=rack%3Dr3&sort=mac&dir=desc", Some(&session));
    assert_eq!(rack.body.matches("<tr data-node-id=").count(), 50);
    assert!(rack.body.contains("aria-sort=\"descending\""));
    let search = get(&s, "/ui/nodes?q=52:54:00:00:01:E", Some(&session));
    assert_eq!(search.body.matches("<tr data-node-id=").count(), 16, "MACs 52:54:00:00:01:e0 to :ef, any case");
    let paged = get(&s, "/ui/nodes?per=50&page=10", Some(&session));
    assert!(paged.body.contains("451–500 of 500 nodes") && paged.body.contains("rel=\"prev\""), "the last page");
    let wrong = get(&s, "/ui/nodes?state=exploded&per=7", Some(&session));
    assert_eq!(wrong.status, 200, "a bad URL still shows the table");
    assert!(wrong.body.contains("Ignored: no state"), "and says what it ignored");
    assert_eq!(get(&s, "/ui/", Some(&session)).status, 200);
    for page in ["/ui/profiles", "/ui/images", "/ui/volumes", "/ui/audit"] {
        let a = get(&s, page, Some(&session));
        assert_eq!(a.status, 200, "{page}: {}", a.body);
    }
}

#[test]
fn a_node_page_shows_its_boot_chain_and_what_the_firmware_enforced() {
    let s = TestServer::start();
    let node = s.handle.block_on(s.store.ensure_node(mac(7), 1)).unwrap();
    let admin = login(&s, &s.admin);
    let page = get(&s, &format!("/ui/nodes/{}", node.id), Some(&admin));
    assert!(page.body.contains("<dt>Boot chain</dt><dd>ipxe (from its profile or the fleet)</dd>"), "{}", page.body);
    let signed = ramboot::store::NodeChange {
        boot_chain: Some(Some(ramboot_core::profile::BootChain::Signed)),
        ..Default::default()
    };
    let actor = ramboot::store::Actor::Token { name: "admin".into() };
    s.handle.block_on(s.store.update_node(node.id, &signed, &actor, 2)).unwrap();
    let report = serde_json::json!({"cpus": 1, "memory_bytes": 1, "kernel": "6.1.0-57-amd64",
        "firmware": {"uefi": true, "secure_boot": true, "lockdown": "integrity"}});
    s.handle.block_on(s.store.set_inventory(node.id, &report, 3)).unwrap();
    let page = get(&s, &format!("/ui/nodes/{}", node.id), Some(&admin));
    assert!(page.body.contains("<dt>Boot chain</dt><dd>signed (set on the node)</dd>"), "{}", page.body);
    assert!(page.body.contains("UEFI, Secure Boot on, lockdown integrity"), "{}", page.body);
}
