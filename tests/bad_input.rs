//! Bad input from outside gets the right status and a controlled page, and leaves state
//! unchanged: no challenge used up, no message spooled, no counter moved.

use crate::util::*;

/// The state that a bad request must not change (temp files would show a torn write too).
fn snapshot(site: &Site) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = walk(&site.root().join("var"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/var/lock/"))
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_default();
            (p.display().to_string(), data)
        })
        .collect();
    v.sort();
    v
}

fn assert_controlled(a: &Answer, status: u16) {
    assert_eq!(a.status, status, "{}", a.text());
    assert_eq!(a.code, Some(0), "the process exits cleanly");
    assert!(!a.stderr.contains("panicked"), "{}", a.stderr);
    let ct = a.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/html")
            || ct.starts_with("application/json")
            || ct.starts_with("text/plain"),
        "{ct}"
    );
}

/// Issue 7, item 9: HEAD is answered like GET, without the body: the same status and
/// headers, `Content-Length` included (a link checker or a monitor asks this way).
#[test]
fn head_is_answered_like_get_without_a_body() {
    let site = Site::new();
    let get = site.cgi("contact", "GET").run();
    let head = site.cgi("contact", "HEAD").run();
    assert_eq!(head.status, 200, "{}", head.text());
    assert!(head.body.is_empty(), "no body: {}", head.text());
    assert_eq!(head.header("content-type"), get.header("content-type"));
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );

    let head = site.cgi("captcha", "HEAD").remote_addr("192.0.2.44").run();
    assert_eq!(head.status, 200, "{}", head.text());
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), Some("image/png"));
    assert_eq!(head.header("cache-control"), Some("no-store"));
    let len: usize = head
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .expect("a Content-Length");
    assert!(len > 1000, "the PNG's length: {len}");
    // A HEAD costs what a GET costs: it counts against the image budget.
    assert_eq!(site.stored_count("192.0.2.44", "captcha_get"), Some(1));

    let a = site.cgi("contact", "PUT").run();
    assert_eq!(a.header("allow"), Some("GET, HEAD, POST"));
    let a = site.cgi("captcha", "POST").run();
    assert_eq!(a.header("allow"), Some("GET, HEAD"));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let site = Site::new();
    let (id, answer) = site.challenge("192.0.2.10");
    let before = snapshot(&site);
    let form = |f: &[(&str, String)]| site.cgi("contact", "POST").captcha_cookie(&id).form(f);

    for (method, bin) in [
        ("PUT", "contact"),
        ("DELETE", "contact"),
        ("POST", "captcha"),
        ("OPTIONS", "captcha"),
    ] {
        let a = site.cgi(bin, method).run();
        assert_controlled(&a, 405);
        assert!(a.header("allow").is_some());
    }
    let big = "x".repeat(40_000);
    assert_controlled(&form(&[("message", big)]).run(), 413);
    // A lying Content-Length above the limit is refused before reading.
    assert_controlled(
        &site
            .cgi("contact", "POST")
            .body("application/x-www-form-urlencoded", b"a=1")
            .var("CONTENT_LENGTH", "999999999999")
            .run(),
        413,
    );
    assert_controlled(
        &site
            .cgi("contact", "POST")
            .body("application/x-www-form-urlencoded", b"a=1")
            .unset("CONTENT_LENGTH")
            .run(),
        411,
    );
    assert_controlled(
        &site
            .cgi("contact", "POST")
            .body("multipart/form-data; boundary=x", b"--x--")
            .run(),
        415,
    );
    assert_controlled(
        &site
            .cgi("contact", "POST")
            .body("application/json", b"{}")
            .run(),
        415,
    );
    for raw in [
        &b"name=%zz&email=a%40b.de"[..],
        b"name=%C3",
        b"name=a&name=b",
        b"\xff\xfe",
    ] {
        assert_controlled(
            &site
                .cgi("contact", "POST")
                .captcha_cookie(&id)
                .body("application/x-www-form-urlencoded", raw)
                .run(),
            400,
        );
    }
    // Announced 100 bytes, sent 3.
    assert_controlled(
        &site
            .cgi("contact", "POST")
            .body("application/x-www-form-urlencoded", b"a=1")
            .var("CONTENT_LENGTH", "100")
            .run(),
        400,
    );

    let mut missing = good_form(&answer);
    missing.retain(|(k, _)| *k != "email" && *k != "message");
    let a = form(&missing).run();
    assert_controlled(&a, 422);
    assert!(a.text().contains("id=\"f-email\"") && a.text().contains("aria-invalid=\"true\""));
    assert!(
        a.text().contains("Ada Lovelace"),
        "the visitor's input is kept"
    );

    let mut no_captcha = good_form(&answer);
    no_captcha.retain(|(k, _)| *k != "captcha");
    assert_controlled(&form(&no_captcha).run(), 422);

    for (field, evil) in [
        ("name", "Eve\r\nBcc: victim@example.com"),
        ("email", "eve@example.com\nBcc: victim@example.com"),
        ("subject", "Hi\u{2028}Bcc: victim@example.com"),
        ("subject", "Hi\u{85}X-Injected: 1"),
        ("email", "not-an-address"),
    ] {
        let mut f = good_form(&answer);
        for (k, v) in f.iter_mut() {
            if *k == field {
                *v = evil.to_string();
            }
        }
        let a = site
            .cgi("contact", "POST")
            .captcha_cookie(&id)
            .header("accept", "application/json")
            .form(&f)
            .run();
        assert_controlled(&a, 422);
        assert!(
            a.text().contains(&format!("\"{field}\":")),
            "the JSON answer names the field: {}",
            a.text()
        );
    }
    assert_eq!(snapshot(&site), before, "bad input changed state");

    // The challenge survived all of that and still works.
    let a = form(&good_form(&answer)).run();
    assert!(a.status == 200 || a.status == 202, "{}", a.text());
}

#[test]
fn missing_and_invalid_config_give_a_controlled_500_and_a_clear_log_line() {
    let site = Site::new();
    std::fs::remove_file(site.var("config/config.toml")).expect("rm");
    for bin in ["captcha", "contact"] {
        let a = site.cgi(bin, "GET").run();
        assert_controlled(&a, 500);
        assert!(a.stderr.contains("config.toml"), "{}", a.stderr);
        assert!(
            !a.text().contains("config.toml"),
            "paths are for the log, not the visitor"
        );
    }
    let a = site.cgi("contact", "POST").form(&good_form("ACDEF")).run();
    assert_controlled(&a, 500);
    assert!(a.text().contains("NOT received"));

    for (config, key) in [
        ("captcha_max_get = 3\n", "ip_salt"),
        ("ip_salt = \"tooshort\"\n", "ip_salt"),
        (
            &format!("ip_salt = \"{SALT}\"\nbogus_key = 1\n"),
            "bogus_key",
        ),
        (
            &format!("ip_salt = \"{SALT}\"\ncontact_max_post = \"lots\"\n"),
            "contact_max_post",
        ),
        (
            &format!("ip_salt = \"{SALT}\"\nlock_wait_ms = 0\n"),
            "lock_wait_ms",
        ),
        ("ip_salt = [unclosed\n", "ip_salt"),
    ] {
        std::fs::write(site.var("config/config.toml"), config).expect("write");
        let a = site
            .cgi("captcha", "GET")
            .header("accept", "application/json")
            .run();
        assert_controlled(&a, 500);
        assert!(
            a.stderr.contains(&format!("`{key}`")),
            "log must name {key}: {}",
            a.stderr
        );
        let cli = site.tokens_cli(&["list", "admin"]);
        assert_eq!(cli.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&cli.stderr).contains(key));
    }
}

#[test]
fn an_unwritable_runtime_tree_refuses_cleanly_and_says_not_received() {
    let site = Site::new();
    let (id, answer) = site.challenge("192.0.2.10");
    // A spool folder that cannot hold files (a file in its place) fails every write the
    // same way a read-only mount does, also for root, which ignores permission bits.
    std::fs::remove_dir(site.var("spool/new")).expect("rmdir");
    std::fs::write(site.var("spool/new"), b"").expect("block");
    let a = site.contact_post(&id, &answer).run();
    assert_controlled(&a, 500);
    assert!(a.text().contains("NOT received"), "{}", a.text());
    assert!(
        a.stderr.contains("spool/new"),
        "the log names the path: {}",
        a.stderr
    );
}

#[test]
fn pages_follow_the_browser_language_and_operator_templates() {
    let site = Site::new();
    let de = site
        .cgi("contact", "GET")
        .header("accept-language", "de-DE,de;q=0.9,en;q=0.8")
        .run();
    assert_eq!(de.status, 200);
    assert!(
        de.text().contains("lang=\"de\"") && de.text().contains("Nachricht"),
        "{}",
        de.text()
    );
    let en = site
        .cgi("contact", "GET")
        .header("accept-language", "fr, en;q=0.5")
        .run();
    assert!(en.text().contains("lang=\"en\"") && en.text().contains("Message"));

    std::fs::create_dir_all(site.var("config/templates")).expect("mkdir");
    std::fs::write(site.var("config/templates/page.html"), "<html lang=\"{{lang}}\"><title>{{title}}</title><body class=\"mine\">{{main}}</body></html>").expect("template");
    let a = site.cgi("contact", "POST").form(&good_form("WRONG")).run();
    assert_eq!(a.status, 403);
    assert!(
        a.text().starts_with("<html lang=\"en\"><title>") && a.text().contains("class=\"mine\""),
        "{}",
        a.text()
    );
    assert!(
        a.text().contains("name=\"captcha\""),
        "the operator's page still carries the form"
    );
    // A template without the placeholder is ignored rather than swallowing the page.
    std::fs::write(
        site.var("config/templates/page.html"),
        "<html>broken</html>",
    )
    .expect("template");
    let a = site.cgi("contact", "GET").run();
    assert!(
        a.text().contains("name=\"captcha\"") && a.stderr.contains("placeholder"),
        "{}",
        a.stderr
    );
}

#[test]
fn a_full_disk_refuses_cleanly_and_says_not_received() {
    let site = Site::new();
    let _fs = site.on_small_disk();
    let (id, answer) = site.challenge("192.0.2.10");

    let fill = site.fill_disk();
    let a = site.contact_post(&id, &answer).run();
    assert_controlled(&a, 503);
    assert!(a.header("retry-after").is_some());
    assert!(a.text().contains("NOT received"), "{}", a.text());
    assert!(
        a.stderr.contains("No space left"),
        "the log says why: {}",
        a.stderr
    );
    assert!(site.ls("spool/new").is_empty() && site.ls("mail-out").is_empty());
    let c = site.cgi("captcha", "GET").run();
    assert_controlled(&c, 503);

    // With space again, the same visitor gets through with a fresh challenge.
    std::fs::remove_file(&fill).expect("free space");
    let (id, answer) = site.challenge("192.0.2.10");
    let a = site.contact_post(&id, &answer).run();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(site.ls("mail-out").len(), 1);
}

#[test]
fn a_cgi_that_read_its_body_does_not_wait_for_the_end_of_stdin() {
    // Regression: the drain of unread bodies once waited for more input after a POST
    // whose body had been read in full, hanging under servers that keep stdin open.
    let site = Site::new();
    let (id, answer) = site.challenge("192.0.2.10");
    let req = site.contact_post(&id, &answer);
    let (mut child, stdin) = req.spawn_keeping_stdin();
    let status = wait_for(std::time::Duration::from_secs(10), || {
        child.try_wait().expect("wait")
    });
    drop(stdin);
    let _ = child.kill();
    assert!(
        status.is_some_and(|s| s.success()),
        "the executable kept waiting on stdin"
    );
}
