//! CAPTCHA rules seen from outside: a challenge passes once, expires, tolerates a bounded
//! number of wrong answers, and hostile ids are refused without touching any path.

use crate::util::*;

fn post(site: &Site, id: &str, answer: &str) -> Answer {
    site.contact_post(id, answer).run()
}

fn accepted(a: &Answer) -> bool {
    a.status == 200 || a.status == 202
}

#[test]
fn the_image_is_a_png_with_a_one_time_cookie_and_no_cache() {
    let site = Site::new();
    let a = site.cgi("captcha", "GET").run();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("image/png"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert!(a.body.starts_with(b"\x89PNG\r\n\x1a\n"));
    let cookie = a.header("set-cookie").expect("cookie");
    // Not HttpOnly: the page's script copies the id into its form (contact.js), so that
    // another tab replacing the cookie cannot swap this page's challenge.
    assert!(
        cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let id = a.cookie("fw_captcha").expect("id");
    // The answer is stored only as a hash.
    let stored = std::fs::read_to_string(site.challenge_path(&id)).expect("challenge file");
    let answer = a.header("x-formwarden-test-answer").expect("hook");
    assert!(
        !stored.contains(answer),
        "the answer must not be stored in clear"
    );
}

#[test]
fn json_mode_returns_id_and_inline_image() {
    let site = Site::new();
    let a = site
        .cgi("captcha", "GET")
        .header("accept", "application/json")
        .run();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let t = a.text();
    // The inline image is the picture itself: standard base64 of a PNG.
    let image = json_field(&t, "image");
    let data = image
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("a PNG data URL: {t}"));
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)
        .expect("the data URL is valid base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A script can post the id as a field instead of the cookie.
    let id = json_field(&t, "id");
    assert!(!id.is_empty(), "a challenge id: {t}");
    let answer = a
        .header("x-formwarden-test-answer")
        .expect("hook")
        .to_string();
    let mut form = good_form(&answer);
    form.push(("captcha_id", id));
    let p = site
        .cgi("contact", "POST")
        .header("accept", "application/json")
        .form(&form)
        .run();
    assert!(accepted(&p), "{} {}", p.status, p.text());
    assert!(p.text().contains("\"ok\":true"));
}

#[test]
fn a_solved_challenge_cannot_be_replayed() {
    let site = Site::new();
    let (id, answer) = site.challenge("192.0.2.10");
    assert!(accepted(&post(&site, &id, &answer)));
    let again = post(&site, &id, &answer);
    assert_eq!(again.status, 403, "replay must be refused");
    assert!(
        again.text().contains("<img src=\"/cgi-bin/captcha\""),
        "the error page offers a fresh challenge"
    );
    let spooled = site.ls("spool/new").len() + site.ls("mail-out").len();
    assert_eq!(spooled, 1);
}

#[test]
fn the_same_answer_posted_twice_at_once_passes_once() {
    let site = Site::new();
    let (id, answer) = site.challenge("192.0.2.10");
    let req = site.contact_post(&id, &answer);
    let answers = collect((0..12).map(|_| req.spawn()).collect());
    assert_eq!(answers.iter().filter(|a| accepted(a)).count(), 1);
    assert_eq!(answers.iter().filter(|a| a.status == 403).count(), 11);
}

#[test]
fn an_expired_challenge_is_refused() {
    let site = Site::with("captcha_lifetime_seconds = 1", "");
    let (id, answer) = site.challenge("192.0.2.10");
    site.advance_clock(2);
    let a = post(&site, &id, &answer);
    assert_eq!(a.status, 403);
    assert!(a.text().contains("expired"), "{}", a.text());
}

#[test]
fn wrong_answers_are_bounded_per_challenge() {
    let site = Site::with("captcha_max_attempts = 3", "");
    let (id, answer) = site.challenge("192.0.2.10");
    for _ in 0..3 {
        assert_eq!(post(&site, &id, "WRONG").status, 403);
    }
    // Even the right answer cannot revive a burnt challenge.
    assert_eq!(post(&site, &id, &answer).status, 403);
}

#[test]
fn answers_are_case_insensitive() {
    let site = Site::new();
    let (id, answer) = site.challenge("192.0.2.10");
    assert!(accepted(&post(
        &site,
        &id,
        &format!(" {} ", answer.to_lowercase())
    )));
}

#[test]
fn hostile_ids_are_refused_without_touching_paths() {
    let site = Site::new();
    let outside = site.root().join("pwned.toml");
    let hostile = [
        "../../pwned".to_string(),
        "../../../../../../tmp/x".to_string(),
        "a".repeat(5000),
        "ä€𝄞".repeat(10),
        "%2e%2e%2fpwned".to_string(),
        "0123456789abcdef0123456789ABCDEF".to_string(),
        String::new(),
    ];
    let before = walk(site.root());
    for id in &hostile {
        let mut form = good_form("ACDEF");
        form.push(("captcha_id", id.clone()));
        let a = site.cgi("contact", "POST").form(&form).run();
        assert_eq!(a.status, 403, "id {id:?}: {}", a.text());
        let a = site
            .cgi("contact", "POST")
            .captcha_cookie(id)
            .form(&good_form("ACDEF"))
            .run();
        assert_eq!(a.status, 403);
    }
    assert!(!outside.exists());
    // Only the rate-limit window and its lock file may have appeared.
    let after: Vec<_> = walk(site.root())
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(after.len() <= 2, "unexpected files: {after:?}");
    assert!(
        after
            .iter()
            .all(|p| p.to_string_lossy().contains("ratelimit")),
        "{after:?}"
    );
}

#[test]
fn a_sweep_removes_expired_challenges_stale_windows_and_their_lock_files() {
    // Lifetimes of 5 s against a clock moved 10 s: the old challenges are over for sure,
    // and the live one is still valid however slow this machine is right now.
    let site = Site::with(
        "captcha_lifetime_seconds = 5\nrate_limit_window_seconds = 1",
        "",
    );
    for _ in 0..3 {
        site.challenge("192.0.2.10");
    }
    let (id, answer) = site.challenge("192.0.2.11");
    assert!(site.files("lock").iter().any(|f| f.starts_with("captcha_")));
    site.advance_clock(10);
    // A challenge that is still being answered is not touched (fresh one, new window).
    let (live_id, live_answer) = site.challenge("192.0.2.12");
    let out = site.tokens_cli(&["sweep"]);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The visitors' own budgeted sweep step (the live challenge's GET) may have taken some
    // of the expired ones first; what is left afterwards is asserted below.
    assert!(report.contains("challenges:"), "{report}");
    let challenges: Vec<_> = site
        .files("tmp/captcha")
        .into_iter()
        .filter(|f| f.ends_with(".toml"))
        .collect();
    assert_eq!(challenges, vec![format!("{live_id}.toml")]);
    let locks = site.files("lock");
    assert!(
        !locks
            .iter()
            .any(|f| f.starts_with(&format!("captcha_{id}"))),
        "{locks:?}"
    );
    assert_eq!(
        locks.iter().filter(|f| f.starts_with("captcha_")).count(),
        1,
        "{locks:?}"
    );
    // The swept challenge is simply unknown now; the live one still works.
    assert_eq!(post(&site, &id, &answer).status, 403);
    assert!(accepted(&post(&site, &live_id, &live_answer)));
}
