//! The mail spool for an operator without a shell: what `spool list|show|release|delete|
//! requeue` does on the command line, the tokens endpoint does over HTTP for a live admin
//! token (`?action=spool&do=…`), so a site on FTP-only hosting can read and release its
//! quarantine and send failed messages again with `curl`. Reads take GET, changes take
//! POST; nobody else gets in, hostile ids are refused, and no answer shows a server path.

use crate::util::*;

/// A request to the tokens endpoint's spool action `what` with `method`, as `token`.
fn spool(site: &Site, method: &str, query: &str, token: Option<&str>) -> Answer {
    let c = site
        .cgi("tokens", method)
        .query(&format!("action=spool&{query}"));
    match token {
        Some(t) => c.header("authorization", &format!("Bearer {t}")).run(),
        None => c.run(),
    }
}

/// Posts a message whose honeypot is filled: it lands in the quarantine.
fn post_suspect(site: &Site, addr: &str) {
    let (id, answer) = site.challenge(addr);
    let mut form = good_form(&answer);
    form.push(("fw_trap", "http://spam.example/".into()));
    let a = site
        .cgi("contact", "POST")
        .remote_addr(addr)
        .captcha_cookie(&id)
        .form(&form)
        .run();
    assert_eq!(a.status, 200, "{}", a.text());
}

#[test]
fn only_a_live_admin_token_opens_the_spool() {
    // The bootstrap secret opens the self-check before the first admin token exists, but
    // never the messages.
    let secret = "a-long-one-time-secret-chosen-by-the-operator-42";
    let digest = bootstrap_digest(secret);
    let site = Site::with("", &format!("[tokens]\nbootstrap_sha256 = \"{digest}\"\n"));
    post_suspect(&site, "198.51.100.120");
    let deploy = site.rotate("deploy");
    // An admin token that was revoked opens nothing either.
    let revoked = site.rotate("admin");
    let out = site.tokens_cli(&["revoke", "admin", "all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (who, token) in [
        ("nobody", None),
        ("a wrong token", Some("not-a-token")),
        ("a token of another profile", Some(deploy.as_str())),
        ("the bootstrap secret", Some(secret)),
        ("a revoked admin token", Some(revoked.as_str())),
    ] {
        for (method, query) in [
            ("GET", "do=list&folder=quarantine"),
            ("POST", "do=release&id=1700000000-0000000000000000"),
        ] {
            let a = spool(&site, method, query, token);
            assert_eq!(a.status, 401, "{who}, {method} {query}: {}", a.text());
            assert!(a.header("www-authenticate").is_some(), "{who}");
            assert!(!a.text().contains("spam.example"), "{who}: nothing shown");
        }
    }
    assert_eq!(site.spool_ids("quarantine").len(), 1, "nothing changed");
}

#[test]
fn the_quarantine_is_listed_shown_released_and_deleted_over_http() {
    let site = Site::new();
    let admin = site.rotate("admin");
    post_suspect(&site, "198.51.100.121");
    post_suspect(&site, "198.51.100.122");
    let held = site.spool_ids("quarantine");
    assert_eq!(held.len(), 2);

    let list = spool(&site, "GET", "do=list&folder=quarantine", Some(&admin));
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(
        list.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(list.header("cache-control"), Some("no-store"));
    // The same lines as `spool list quarantine` prints.
    let cli = site.cli("spool", &["list", "quarantine"]);
    assert_eq!(list.text(), String::from_utf8_lossy(&cli.stdout));
    for id in &held {
        assert!(list.text().contains(id.as_str()), "{}", list.text());
    }
    assert!(list.text().contains("honeypot"), "{}", list.text());

    let show = spool(
        &site,
        "GET",
        &format!("do=show&id={}", held[0]),
        Some(&admin),
    );
    assert_eq!(show.status, 200, "{}", show.text());
    // The message as stored, byte for byte.
    let stored = std::fs::read_to_string(site.var(&format!("spool/quarantine/{}.toml", held[0])))
        .expect("stored");
    assert_eq!(show.text(), stored);
    assert!(stored.contains("Ada Lovelace"), "{stored}");

    // Another process holds a message: "busy, try again", and nothing changes.
    {
        let _held = site.hold_lock(&formwarden::lock::LockKey::spool(&held[0]));
        let busy = spool(
            &site,
            "POST",
            &format!("do=release&id={}", held[0]),
            Some(&admin),
        );
        assert_eq!(busy.status, 503, "{}", busy.text());
        assert_eq!(busy.header("retry-after"), Some("1"));
        assert_eq!(site.spool_ids("quarantine").len(), 2);
    }

    // Release sends it; delete removes the other for good.
    let release = spool(
        &site,
        "POST",
        &format!("do=release&id={}", held[0]),
        Some(&admin),
    );
    assert_eq!(release.status, 200, "{}", release.text());
    assert!(release.text().contains("delivered"), "{}", release.text());
    assert_eq!(site.delivered(), 1);
    let delete = spool(
        &site,
        "POST",
        &format!("do=delete&id={}", held[1]),
        Some(&admin),
    );
    assert_eq!(delete.status, 200, "{}", delete.text());
    assert!(site.spool_ids("quarantine").is_empty());
    assert_eq!(site.delivered(), 1, "the deleted one was never sent");

    // Both are gone from the quarantine now.
    for id in &held {
        let again = spool(&site, "POST", &format!("do=release&id={id}"), Some(&admin));
        assert_eq!(again.status, 404, "{}", again.text());
    }
    let gone = spool(
        &site,
        "GET",
        &format!("do=show&id={}", held[1]),
        Some(&admin),
    );
    assert_eq!(gone.status, 404, "{}", gone.text());
}

#[test]
fn failed_messages_are_requeued_over_http_and_go_out_without_cron() {
    let site = Site::with_mail_lines("max_attempts = 1\n");
    let admin = site.rotate("admin");
    // The transport's folder is a file: the one attempt fails and the message is given up.
    site.block_mail(true);
    let (id, answer) = site.challenge("198.51.100.123");
    let a = site
        .contact_post(&id, &answer)
        .remote_addr("198.51.100.123")
        .run();
    assert_eq!(a.status, 202, "{}", a.text());
    let failed = site.spool_ids("failed");
    assert_eq!(failed.len(), 1, "given up after one attempt");
    let list = spool(&site, "GET", "do=list&folder=failed", Some(&admin));
    assert_eq!(list.status, 200);
    assert!(list.text().contains(&failed[0]), "{}", list.text());

    // A message another process holds is "busy", not "missing".
    {
        let _held = site.hold_lock(&formwarden::lock::LockKey::spool(&failed[0]));
        let busy = spool(
            &site,
            "POST",
            &format!("do=requeue&id={}", failed[0]),
            Some(&admin),
        );
        assert_eq!(busy.status, 503, "{}", busy.text());
        assert!(busy.text().contains("busy"), "{}", busy.text());
    }
    site.block_mail(false); // The operator fixes it.
    let none = spool(
        &site,
        "POST",
        "do=requeue&id=1700000000-0000000000000000",
        Some(&admin),
    );
    assert_eq!(none.status, 404, "{}", none.text());
    let requeue = spool(&site, "POST", "do=requeue&id=all", Some(&admin));
    assert_eq!(requeue.status, 200, "{}", requeue.text());
    assert!(requeue.text().contains("requeued 1"), "{}", requeue.text());
    assert_eq!(site.spool_ids("new"), failed);

    // No cron: the next visitor's request sends it after its own answer.
    let get = site
        .cgi("captcha", "GET")
        .remote_addr("198.51.100.124")
        .run();
    assert_eq!(get.status, 200);
    assert_eq!(site.delivered(), 1, "delivered by the after-answer step");
    assert!(site.spool_ids("new").is_empty());
}

#[test]
fn wrong_methods_unknown_commands_and_hostile_ids_are_refused() {
    let site = Site::new();
    let admin = site.rotate("admin");
    post_suspect(&site, "198.51.100.125");
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "do=release&id=1700000000-0000000000000000", 405),
        ("GET", "do=delete&id=1700000000-0000000000000000", 405),
        ("GET", "do=requeue&id=all", 405),
        ("POST", "do=list", 405),
        ("POST", "do=show&id=1700000000-0000000000000000", 405),
        ("HEAD", "do=list", 405),
        ("GET", "do=retry", 400),
        ("GET", "do=rm%20-rf", 400),
        ("GET", "", 400),
        ("GET", "do=list&folder=../../config", 400),
        ("GET", "do=show&id=../../config/config", 400),
        ("GET", "do=show", 400),
        ("POST", "do=release&id=..%2f..%2fconfig%2fconfig", 400),
        ("POST", "do=delete&id=", 400),
        ("POST", "do=requeue&id=%00", 400),
    ];
    for (method, query, status) in cases {
        let a = spool(&site, method, query, Some(&admin));
        assert_eq!(a.status, *status, "{method} {query}: {}", a.text());
        assert_eq!(a.code, Some(0), "{method} {query}");
        site.assert_shows_no_path(&a, query);
        if *status == 405 {
            assert!(a.header("allow").is_some(), "{method} {query}");
        }
    }
    assert_eq!(site.spool_ids("quarantine").len(), 1, "nothing changed");
    assert!(site.var("config/config.toml").is_file());
}

/// A quarantined message released while the mail server is away is saved for the retry
/// (202, as the contact form answers), and goes out once the server is back.
#[test]
fn a_release_while_the_mail_server_is_away_waits_in_the_spool() {
    let site = Site::new();
    let admin = site.rotate("admin");
    post_suspect(&site, "198.51.100.126");
    let held = site.spool_ids("quarantine");
    site.block_mail(true);
    let release = spool(
        &site,
        "POST",
        &format!("do=release&id={}", held[0]),
        Some(&admin),
    );
    assert_eq!(release.status, 202, "{}", release.text());
    assert_eq!(site.spool_ids("new"), held, "waits in new/");
    site.block_mail(false);
    site.advance_clock(24 * 3600);
    let get = site
        .cgi("captcha", "GET")
        .remote_addr("198.51.100.127")
        .run();
    assert_eq!(get.status, 200);
    assert_eq!(site.delivered(), 1, "sent by the step after the answer");
}
