//! The browser tests' own client (`common::browser`) against a real headless
//! Chromium and a tiny HTTP server of fixed pages: navigation, finding, typing with
//! keys, a GET form, cookies, scripts, screenshots, JavaScript switched off, and
//! axe-core telling a page with an unlabelled image from one without.
//!
//! Needs chromium, chromedriver and axe-core (`.ci/run` installs them); elsewhere
//! it skips with a message, in CI it fails.

mod common;

use common::browser::{keys, Browser, Options};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const FORM: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Form</title></head>
<body><main>
<h1 id="heading">Static</h1>
<script>document.getElementById('heading').textContent = 'Scripted';</script>
<form action="/search" method="get">
  <label for="q">Query</label> <input id="q" name="q" type="text">
  <button type="submit">Search</button>
</form>
</main></body></html>"#;

const RESULTS: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Results</title></head>
<body><main><h1>Results</h1></main></body></html>"#;

/// Accessible but for one image without a text alternative (axe's `image-alt`).
const BAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bad</title></head>
<body><main><h1>Bad</h1><img src="/missing.png"></main></body></html>"#;

/// Serve the pages above on 127.0.0.1 until the test process ends; the base URL.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let base = format!("http://{}", listener.local_addr().expect("the listener's address"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // A thread each: Chromium opens connections it may never send on.
            std::thread::spawn(move || answer(stream));
        }
    });
    base
}

fn answer(mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, extra, body) = match path.split('?').next() {
        Some("/") => ("200 OK", "Set-Cookie: session=s3cret; HttpOnly; Path=/\r\n", FORM),
        Some("/search") => ("200 OK", "", RESULTS),
        Some("/bad") => ("200 OK", "", BAD),
        _ => ("404 Not Found", "", ""),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn navigates_types_submits_and_keeps_cookies() {
    let Some(browser) = Browser::start("webdriver_navigates_types_submits_and_keeps_cookies") else { return };
    let base = serve();
    browser.goto(&format!("{base}/"));
    assert_eq!(browser.title(), "Form");
    assert_eq!(browser.url(), format!("{base}/"));
    assert_eq!(browser.find("h1").text(), "Scripted", "scripts run by default");
    // The window is 1366×900; the viewport as wide, less the (headless) toolbars high.
    assert_eq!(browser.execute("return window.innerWidth", &[]), json!(1366));
    assert!(browser.try_find("#nothing-here").is_none());
    assert!(browser.page_source().contains("<form"));

    let form = browser.find("form");
    assert_eq!(form.find_all("input, button").len(), 2);
    let input = form.find("input[name=q]");
    assert_eq!(input.attr("id").as_deref(), Some("q"));
    assert_eq!(input.attr("placeholder"), None);
    assert!(input.is_displayed());
    input.send_keys("first");
    input.clear();
    input.send_keys("hello world");
    assert_eq!(input.prop("value"), json!("hello world"));

    // Tab to the button, then Enter on it: a keyboard-only submit.
    input.send_keys(keys::TAB);
    let focused = browser.execute("return document.activeElement.tagName", &[]);
    assert_eq!(focused, json!("BUTTON"));
    browser.send_keys_active(keys::ENTER);
    browser.wait_until(WAIT, "the results page", |b| b.url().ends_with("/search?q=hello+world"));
    browser.wait_for("main h1", WAIT);
    assert_eq!(browser.title(), "Results");

    // Enter in the field submits too.
    browser.back();
    browser.wait_until(WAIT, "the form again", |b| b.title() == "Form");
    let input = browser.find("#q");
    input.clear();
    input.send_keys(&format!("again{}", keys::ENTER));
    browser.wait_until(WAIT, "the second search", |b| b.url().ends_with("/search?q=again"));

    let cookies = browser.cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(
        (&cookies[0]["name"], &cookies[0]["value"], &cookies[0]["httpOnly"]),
        (&json!("session"), &json!("s3cret"), &json!(true))
    );
    browser.add_cookie(json!({ "name": "theme", "value": "dark" }));
    assert_eq!(browser.execute("return document.cookie", &[]), json!("theme=dark"), "HttpOnly stays hidden");
    browser.delete_cookies();
    assert!(browser.cookies().is_empty());
    browser.refresh();

    let doubled = browser.execute_async(
        "const done = arguments[arguments.length - 1]; setTimeout(() => done(arguments[0] * 2), 10);",
        &[json!(21)],
    );
    assert_eq!(doubled, json!(42));
    let heading = browser.find("h1");
    assert_eq!(browser.execute("return arguments[0].textContent", &[heading.json()]), json!("Results"));

    let shot = browser.save_screenshot("results");
    let png = std::fs::read(&shot).expect("the screenshot file");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", shot.display());
}

#[test]
fn javascript_off_leaves_page_scripts_unrun() {
    let options = Options { javascript: false, window: (800, 600) };
    let Some(browser) = Browser::start_with("webdriver_javascript_off_leaves_page_scripts_unrun", options) else {
        return;
    };
    browser.goto(&format!("{}/", serve()));
    assert_eq!(browser.find("h1").text(), "Static");
    // WebDriver's own scripts still run, and see the window asked for.
    assert_eq!(browser.execute("return window.innerWidth", &[]), json!(800));
    // And forms work without scripts.
    browser.find("#q").send_keys(&format!("plain{}", keys::ENTER));
    browser.wait_until(WAIT, "the results page", |b| b.url().ends_with("/search?q=plain"));
}

#[test]
fn axe_finds_an_image_without_alt_text() {
    let Some(browser) = Browser::start("webdriver_axe_finds_an_image_without_alt_text") else { return };
    let base = serve();
    browser.goto(&format!("{base}/bad"));
    let Some(violations) = browser.axe_violations() else { return };
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(violations[0].starts_with("image-alt: "), "{}", violations[0]);
    assert!(violations[0].ends_with("(1 nodes: img)"), "{}", violations[0]);

    browser.goto(&format!("{base}/"));
    browser.assert_accessible("form");
    // Again on the same page: axe is injected once per page.
    assert_eq!(browser.axe_violations(), Some(vec![]));
}
