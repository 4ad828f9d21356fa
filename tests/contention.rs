//! No lost updates: dozens of executables at once on one client key must produce exactly
//! as many admitted answers as the limit allows, and the stored counter must equal them.
//! Lock timeouts are counted and reported, never hidden (the target is zero).

use crate::util::*;

#[test]
fn sixty_four_processes_on_one_key_admit_exactly_the_limit() {
    let site = Site::with("captcha_max_get = 40", "");
    let req = site.cgi("captcha", "GET").remote_addr("203.0.113.5");
    let children: Vec<_> = (0..64).map(|_| req.spawn()).collect();
    let answers = collect(children);
    let (ok, limited, timeouts) = tally(&answers);
    eprintln!(
        "one key, 64 processes: {ok} admitted, {limited} limited, {timeouts} lock timeouts (target 0)"
    );
    // Exact accounting: every answer is one of the three, a request that timed out was
    // never counted, so the admitted number is the limit or everything that got the lock.
    assert_eq!(
        ok + limited + timeouts,
        64,
        "every process answered 200, 429 or 503"
    );
    assert_eq!(
        ok,
        40.min(64 - timeouts),
        "admitted exactly what the limit allows"
    );
    assert_eq!(
        site.stored_count("203.0.113.5", "captcha_get")
            .expect("window file") as usize,
        ok,
        "stored counter equals admitted requests"
    );
    let with_retry = answers.iter().filter(|a| a.status == 429).all(|a| {
        a.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok())
    });
    assert!(with_retry, "every 429 carries Retry-After");
    // Every admitted request created exactly one challenge.
    assert_eq!(
        site.files("tmp/captcha")
            .iter()
            .filter(|f| f.ends_with(".toml"))
            .count(),
        ok
    );
}

#[test]
fn distinct_keys_do_not_interfere() {
    let site = Site::with("captcha_max_get = 1", "");
    let children: Vec<_> = (0..48)
        .map(|i| {
            site.cgi("captcha", "GET")
                .remote_addr(&format!("198.51.100.{i}"))
                .spawn()
        })
        .collect();
    let answers = collect(children);
    let (ok, limited, timeouts) = tally(&answers);
    eprintln!("48 distinct keys: {ok} admitted, {limited} limited, {timeouts} lock timeouts");
    // Distinct keys never wait for one another, so nothing may time out here.
    assert_eq!((ok, limited, timeouts), (48, 0, 0));
    for i in 0..48 {
        assert_eq!(
            site.stored_count(&format!("198.51.100.{i}"), "captcha_get")
                .expect("window file"),
            1
        );
    }
}

#[test]
fn concurrent_contact_posts_count_exactly_and_spool_each_admitted_message_once() {
    let site = Site::with("contact_max_post = 10", "");
    let addr = "203.0.113.77";
    let posts: Vec<_> = (0..24)
        .map(|_| {
            let (id, answer) = site.challenge(addr);
            site.cgi("contact", "POST")
                .remote_addr(addr)
                .captcha_cookie(&id)
                .form(&good_form(&answer))
        })
        .collect();
    let children: Vec<_> = posts.iter().map(Cgi::spawn).collect();
    let answers = collect(children);
    let accepted = answers
        .iter()
        .filter(|a| a.status == 200 || a.status == 202)
        .count();
    let limited = answers.iter().filter(|a| a.status == 429).count();
    let timeouts = answers.iter().filter(|a| a.status == 503).count();
    eprintln!(
        "24 concurrent posts, limit 10: {accepted} accepted, {limited} limited, {timeouts} lock timeouts (target 0)"
    );
    assert_eq!(accepted + limited + timeouts, 24);
    assert_eq!(accepted, 10.min(24 - timeouts));
    assert_eq!(
        site.stored_count(addr, "contact_post")
            .expect("window file") as usize,
        accepted
    );
    let delivered = site.ls("spool/new").len() + site.ls("mail-out").len();
    assert_eq!(
        delivered, accepted,
        "each accepted message exists exactly once"
    );
}
