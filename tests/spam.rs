//! Issue 8, items 1 to 3: the spam layers after the CAPTCHA, through the real executables.
//! A filled honeypot quarantines behind the normal answer; the time trap (from the
//! challenge's own issue time) asks a too-quick sender to send again and keeps the
//! challenge; the content rules quarantine or refuse as configured; the quarantine is
//! listed, released (then delivered) and deleted by `spool`, and has a ceiling. Nothing
//! suspected is ever dropped without the sender or the operator being told.

use crate::util::*;

fn quarantined(site: &Site) -> Vec<String> {
    site.spool_ids("quarantine")
}

fn post(site: &Site, fields: &[(&str, String)]) -> Answer {
    let (id, answer) = site.challenge("192.0.2.10");
    let mut form = good_form(&answer);
    for (k, v) in fields {
        form.retain(|(name, _)| name != k);
        form.push((k, v.clone()));
    }
    site.cgi("contact", "POST")
        .captcha_cookie(&id)
        .form(&form)
        .run()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_filled_honeypot_is_quarantined_behind_the_normal_answer_and_released_by_the_operator() {
    let site = Site::new();
    let honest = post(&site, &[]);
    assert_eq!(honest.status, 200, "{}", honest.text());
    assert_eq!(site.delivered(), 1);

    let bot = post(&site, &[("fw_trap", "http://spam.example/".into())]);
    assert_eq!(
        bot.status,
        honest.status,
        "the normal answer: {}",
        bot.text()
    );
    let strip_id = |t: String| t.lines().filter(|l| !l.contains("id")).collect::<String>();
    assert_eq!(
        strip_id(bot.text()),
        strip_id(honest.text()),
        "the same page"
    );
    assert_eq!(site.delivered(), 1, "not sent");
    let held = quarantined(&site);
    assert_eq!(held.len(), 1);
    assert!(bot.stderr.contains("quarantined"), "logged: {}", bot.stderr);

    let list = site.cli("spool", &["list", "quarantine"]);
    assert!(list.status.success());
    assert!(
        stdout(&list).contains(&held[0]) && stdout(&list).contains("honeypot"),
        "{}",
        stdout(&list)
    );
    let same = site.cli("spool", &["list", "--quarantine"]);
    assert_eq!(stdout(&same), stdout(&list));
    let show = site.cli("spool", &["show", &held[0]]);
    assert!(stdout(&show).contains("Ada Lovelace"), "{}", stdout(&show));
    // The retry run never sends from the quarantine.
    site.cli("spool", &["retry"]);
    assert_eq!(site.delivered(), 1);

    let released = site.cli("spool", &["release", &held[0]]);
    assert!(released.status.success(), "{}", stdout(&released));
    assert!(stdout(&released).contains("delivered"));
    assert_eq!(site.delivered(), 2, "released and sent");
    assert!(quarantined(&site).is_empty());
    let again = site.cli("spool", &["release", &held[0]]);
    assert_eq!(again.status.code(), Some(1), "released once only");

    post(&site, &[("fw_trap", "x".into())]);
    let second = quarantined(&site);
    assert_eq!(second.len(), 1);
    let deleted = site.cli("spool", &["delete", &second[0]]);
    assert!(deleted.status.success());
    assert!(quarantined(&site).is_empty());
    assert_eq!(site.delivered(), 2, "deleted, not sent");
    let hostile = site.cli("spool", &["release", "../../config/config"]);
    assert!(!hostile.status.success());
    assert!(
        String::from_utf8_lossy(&hostile.stderr).contains("spool id"),
        "{}",
        String::from_utf8_lossy(&hostile.stderr)
    );
    assert!(site.var("config/config.toml").exists());
}

#[test]
fn the_time_trap_asks_to_send_again_and_keeps_the_challenge() {
    let site = Site::with("", "[spam]\nmin_fill_seconds = 5\n");
    let (id, answer) = site.challenge("192.0.2.10");
    let quick = site.contact_post(&id, &answer).run();
    assert_eq!(quick.status, 422, "{}", quick.text());
    assert!(quick.text().contains("very quick"), "{}", quick.text());
    assert!(
        quick.text().contains("Ada Lovelace"),
        "the form comes back filled in"
    );
    assert_eq!(site.delivered(), 0);
    assert!(quarantined(&site).is_empty());
    // A person who reads the page and sends again a few seconds later gets through with
    // the same challenge: the quick try cost no attempt.
    site.advance_clock(6);
    let later = site.contact_post(&id, &answer).run();
    assert_eq!(later.status, 200, "{}", later.text());
    assert_eq!(site.delivered(), 1);

    let strict = Site::with(
        "",
        "[spam]\nmin_fill_seconds = 5\ntoo_soon = \"quarantine\"\n",
    );
    let (id, answer) = strict.challenge("192.0.2.10");
    let quick = strict.contact_post(&id, &answer).run();
    assert_eq!(quick.status, 200, "{}", quick.text());
    assert_eq!(strict.delivered(), 0);
    let held = quarantined(&strict);
    assert_eq!(held.len(), 1);
    let list = stdout(&strict.cli("spool", &["list", "quarantine"]));
    assert!(list.contains("too_soon"), "{list}");
}

#[test]
fn content_rules_quarantine_or_refuse_as_configured() {
    let site = Site::new();
    std::fs::write(
        site.var("config/blocked-words.txt"),
        "# the operator's list\ncasino\n",
    )
    .expect("write list");
    let links = "see http://a.example http://b.example http://c.example".to_string();
    for (fields, rule) in [
        (vec![("message", links.clone())], "links"),
        (vec![("name", "wYrHwDwEgDCx".to_string())], "gibberish_name"),
        (
            vec![("subject", "Hi".into()), ("message", "Hi".into())],
            "repeated_field",
        ),
        (
            vec![("message", "Best CASINO offers".to_string())],
            "blocked_word",
        ),
    ] {
        let a = post(&site, &fields);
        assert_eq!(a.status, 200, "{rule}: {}", a.text());
        let list = stdout(&site.cli("spool", &["list", "quarantine"]));
        assert!(list.contains(rule), "{rule}: {list}");
    }
    assert_eq!(quarantined(&site).len(), 4);
    assert_eq!(site.delivered(), 0);
    // Two links are fine, and a word inside a longer one is not the listed word.
    let fine = post(
        &site,
        &[(
            "message",
            "http://a.example and http://b.example, from Essex casinos".into(),
        )],
    );
    assert_eq!(fine.status, 200);
    assert_eq!(site.delivered(), 1);

    let strict = Site::with(
        "",
        "[spam]\nmin_fill_seconds = 0\nlinks = \"reject\"\nblocked_domains = \"reject\"\n",
    );
    std::fs::write(strict.var("config/blocked-domains.txt"), "spam.example\n").expect("write");
    let refused = post(&strict, &[("message", links)]);
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.text().contains("too many links"),
        "{}",
        refused.text()
    );
    assert!(refused.text().contains("Ada Lovelace"), "refilled");
    let json = {
        let (id, answer) = strict.challenge("192.0.2.11");
        let mut form = good_form(&answer);
        form.retain(|(k, _)| *k != "email");
        form.push(("email", "bot@mail.spam.example".into()));
        strict
            .cgi("contact", "POST")
            .remote_addr("192.0.2.11")
            .header("accept", "application/json")
            .captcha_cookie(&id)
            .form(&form)
            .run()
    };
    assert_eq!(json.status, 422);
    assert!(
        json.text().contains("\"error\":\"refused\""),
        "{}",
        json.text()
    );
    assert_eq!(strict.delivered(), 0);
    assert!(quarantined(&strict).is_empty(), "refused, so nothing held");
}

#[test]
fn a_full_quarantine_refuses_new_suspects_with_a_503() {
    let site = Site::with("", "[spam]\nmin_fill_seconds = 0\nmax_quarantine = 2\n");
    for _ in 0..2 {
        assert_eq!(post(&site, &[("fw_trap", "x".into())]).status, 200);
    }
    let third = post(&site, &[("fw_trap", "x".into())]);
    assert_eq!(third.status, 503, "{}", third.text());
    assert!(third.header("retry-after").is_some());
    assert_eq!(quarantined(&site).len(), 2);
    // Honest messages are not held back by a full quarantine.
    assert_eq!(post(&site, &[]).status, 200);
    assert_eq!(site.delivered(), 1);
}

#[test]
fn the_honeypot_is_the_same_on_every_form_and_hidden_from_people() {
    let site = Site::new();
    let page = site.cgi("contact", "GET").run().text();
    assert!(
        page.contains(formwarden::pages::HONEYPOT_HTML.trim()),
        "{page}"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/site");
    for f in ["index.html", "de/index.html"] {
        let html = std::fs::read_to_string(root.join(f)).expect("page");
        assert!(
            html.contains(formwarden::pages::HONEYPOT_HTML.trim()),
            "deploy/site/{f} has the honeypot as the executable renders it"
        );
    }
    let hp = formwarden::pages::HONEYPOT_HTML;
    for must in [
        "aria-hidden=\"true\"",
        "tabindex=\"-1\"",
        "autocomplete=\"off\"",
        "left:-10000px",
        "data-lpignore=\"true\"",
        "data-1p-ignore",
        "data-bwignore",
        &format!("name=\"{}\"", formwarden::screen::HONEYPOT_FIELD),
    ] {
        assert!(hp.contains(must), "{must}");
    }
    assert!(!hp.contains("display:none"), "off-screen, not display:none");
}
