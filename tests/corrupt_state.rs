//! Corrupt state of every kind, on the files store: a rate-limit window, a challenge, a
//! token list and the mail quota, each truncated, garbage, of the wrong type, out of range
//! or stamped in the future. Each is reset with a logged reason naming the file (the
//! design's `ResetExecutor`), the request that found it is answered as for fresh state,
//! and what is stored afterwards parses. A token list is the exception: verification fails
//! closed (no token verifies) and leaves it as it is; only the operator's rotation replaces
//! it, with a logged reason.

use crate::util::*;

/// The ways one state file can be broken, by its valid text: cut off half-way, bytes that
/// are not TOML, lists where numbers and text belong, negative numbers, and `future`, the
/// valid text with a time stamp a year ahead.
fn corruptions(valid: &str, future: &str) -> Vec<(&'static str, String)> {
    vec![
        ("truncated", valid[..valid.len() / 2].to_string()),
        (
            "garbage",
            "\u{0}\u{1}PK\u{3}\u{4} not toml at all [[[".to_string(),
        ),
        ("wrong types", valid.replace(" = ", " = [\"x\"] #")),
        ("out of range", out_of_range(valid)),
        ("future", future.to_string()),
    ]
}

/// `valid` with every number made negative, which no counter or time stamp can be.
fn out_of_range(valid: &str) -> String {
    valid
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some((k, v)) if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => {
                format!("{k} = -{v}")
            }
            // A list of numbers (the quota's send times): each one negative.
            Some((k, v)) if v.starts_with('[') && v.bytes().any(|b| b.is_ascii_digit()) => {
                let items: Vec<String> = v
                    .trim_matches(['[', ']'])
                    .split(',')
                    .map(|n| format!("-{}", n.trim()))
                    .collect();
                format!("{k} = [{}]", items.join(", "))
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The log says that `path` was reset and why.
fn assert_reset_logged(log: &str, path: &std::path::Path, kind: &str) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    assert!(
        log.contains("state reset") && log.contains(name) && log.contains("reason"),
        "{kind}: the reset names the file and its reason:\n{log}"
    );
}

#[test]
fn a_corrupt_rate_limit_window_is_reset_and_counting_starts_again() {
    let site = Site::new();
    let addr = "198.51.100.70";
    let path = site.window_path(addr);
    assert_eq!(
        site.cgi("captcha", "GET").remote_addr(addr).run().status,
        200
    );
    let valid = std::fs::read_to_string(&path).expect("window");
    let year_ahead = formwarden::state::now() + 365 * 86_400;
    let start = valid
        .lines()
        .find(|l| l.starts_with("window_start"))
        .expect("window_start")
        .to_string();
    let future = valid.replace(&start, &format!("window_start = {year_ahead}"));
    for (kind, text) in corruptions(&valid, &future) {
        std::fs::write(&path, &text).expect("corrupt");
        let a = site.cgi("captcha", "GET").remote_addr(addr).run();
        assert_eq!(
            a.status,
            200,
            "{kind}: answered as a fresh window: {}",
            a.text()
        );
        assert_reset_logged(&a.stderr, &path, kind);
        assert_eq!(
            site.stored_count(addr, "captcha_get"),
            Some(1),
            "{kind}: counted afresh"
        );
    }
}

#[test]
fn a_corrupt_challenge_is_reset_and_answered_as_unknown_never_as_passed() {
    let site = Site::new();
    let addr = "198.51.100.71";
    let (id, answer) = site.challenge(addr);
    let path = site.challenge_path(&id);
    let valid = std::fs::read_to_string(&path).expect("challenge");
    let year_ahead = formwarden::state::now() + 365 * 86_400;
    let created = valid
        .lines()
        .find(|l| l.starts_with("created_at"))
        .expect("created_at")
        .to_string();
    let future = valid.replace(&created, &format!("created_at = {year_ahead}"));
    for (kind, text) in corruptions(&valid, &future) {
        std::fs::write(&path, &text).expect("corrupt");
        let a = site.contact_post(&id, &answer).remote_addr(addr).run();
        assert_eq!(
            a.status,
            403,
            "{kind}: a broken challenge never passes: {}",
            a.text()
        );
        assert_reset_logged(&a.stderr, &path, kind);
        assert!(!path.exists(), "{kind}: the broken file is gone");
        assert!(
            site.ls("spool/new").is_empty() && site.delivered() == 0,
            "{kind}: nothing sent"
        );
    }
}

#[test]
fn a_corrupt_token_list_fails_closed_until_a_rotation_replaces_it() {
    let site = Site::new();
    let secret = site.rotate("deploy");
    let path = site.var("state/tokens/deploy.toml");
    let valid = std::fs::read_to_string(&path).expect("list");
    let verify = || {
        site.cgi("tokens", "GET")
            .query("profile=deploy")
            .header("authorization", &format!("Bearer {secret}"))
            .run()
    };
    assert_eq!(verify().status, 204);
    for (kind, text) in corruptions(&valid, &valid) {
        if kind == "future" {
            continue; // A token list holds no creation stamp that could lie ahead.
        }
        std::fs::write(&path, &text).expect("corrupt");
        let a = verify();
        assert!(
            a.status == 401 || a.status == 500 || a.status == 503,
            "{kind}: fails closed, never 204: {} {}",
            a.status,
            a.text()
        );
        assert_eq!(
            std::fs::read_to_string(&path).expect("kept"),
            text,
            "{kind}: never reset (that would drop every token)"
        );
        assert!(
            !a.text().contains(&site.root().display().to_string()),
            "{kind}: no path shown"
        );
    }
    // The operator's way out is a rotation: it replaces the broken list (saying so in the
    // log) with one that holds only the new token.
    let out = site.tokens_cli(&["rotate", "deploy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_reset_logged(&String::from_utf8_lossy(&out.stderr), &path, "rotation");
    let fresh = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let status = |token: &str| {
        site.cgi("tokens", "GET")
            .query("profile=deploy")
            .header("authorization", &format!("Bearer {token}"))
            .run()
            .status
    };
    assert_eq!((status(&fresh), status(&secret)), (204, 401));
}

#[test]
fn a_corrupt_mail_quota_is_reset_and_the_message_still_goes_out() {
    let site = Site::with_mail_lines("max_per_hour = 50\n");
    let send = |addr: &str| {
        let (id, answer) = site.challenge(addr);
        site.contact_post(&id, &answer).remote_addr(addr).run()
    };
    assert_eq!(send("198.51.100.72").status, 200);
    let path = site.var("state/mail-quota.toml");
    let valid = std::fs::read_to_string(&path).expect("quota");
    let year_ahead = formwarden::state::now() + 365 * 86_400;
    let future = format!("at = [{year_ahead}]\n");
    let mut sent = 1;
    for (i, (kind, text)) in corruptions(&valid, &future).into_iter().enumerate() {
        std::fs::write(&path, &text).expect("corrupt");
        let a = send(&format!("198.51.100.{}", 80 + i));
        assert_eq!(a.status, 200, "{kind}: delivered: {}", a.text());
        sent += 1;
        assert_reset_logged(&a.stderr, &path, kind);
        assert_eq!(site.delivered(), sent, "{kind}");
        let now_text = std::fs::read_to_string(&path).expect("quota again");
        assert!(
            now_text.starts_with("at = ["),
            "{kind}: a valid quota again: {now_text}"
        );
    }
}
