//! The seed's ConcurrencyTest: for each write path, holding the expected lock key from
//! another process makes the executable answer 503 `Lock-Timeout nach 300ms: <key>` after
//! the wait bound, and the same request succeeds once the key is released.

use crate::util::*;
use formwarden::lock::LockKey;

fn assert_timed_out(a: &Answer, key: &LockKey) {
    let expected = assert_lock_timeout(a, key);
    assert!(
        a.stderr.contains(&expected),
        "log must name the key: {}",
        a.stderr
    );
}

#[test]
fn captcha_get_takes_the_ratelimit_key() {
    let site = Site::new();
    let key = LockKey::ratelimit(&client_key("192.0.2.10"));
    assert_eq!(key.as_str().len(), "ratelimit_".len() + 64);
    let held = site.hold_lock(&key);
    let a = site.cgi("captcha", "GET").run();
    assert_timed_out(&a, &key);
    assert!(
        site.files("tmp/captcha").iter().all(|f| f == ".keep"),
        "no challenge while refused"
    );
    drop(held);
    assert_eq!(site.cgi("captcha", "GET").run().status, 200);
}

#[test]
fn contact_post_takes_the_ratelimit_key_then_the_captcha_key() {
    let site = Site::new();
    let (id, answer) = site.challenge("192.0.2.10");
    let post = site.contact_post(&id, &answer);

    let rl = LockKey::ratelimit(&client_key("192.0.2.10"));
    let held = site.hold_lock(&rl);
    assert_timed_out(&post.run(), &rl);
    drop(held);

    let ck = LockKey::captcha(&id);
    assert_eq!(ck.as_str(), format!("captcha_{id}"));
    let held = site.hold_lock(&ck);
    let a = post.run();
    assert_timed_out(&a, &ck);
    assert!(
        a.text().contains("NOT received"),
        "a refused POST says the message was not received"
    );
    assert!(site.ls("spool/new").is_empty());
    drop(held);

    let a = post.run();
    assert!(
        a.status == 200 || a.status == 202,
        "after release the same POST succeeds: {} {}",
        a.status,
        a.text()
    );
}

#[test]
fn token_rotation_takes_the_profile_key_and_verify_stays_lock_free() {
    let site = Site::new();
    let out = site.tokens_cli(&["rotate", "deploy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let out = site.tokens_cli(&["rotate", "admin"]);
    let admin = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();

    let key = LockKey::token("deploy");
    assert_eq!(key.as_str(), "token_deploy");
    let held = site.hold_lock(&key);

    // CLI rotation times out with the seed's message and a non-zero exit.
    let out = site.tokens_cli(&["rotate", "deploy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Lock-Timeout nach 300ms: token_deploy"));

    // HTTP rotation answers 503.
    let a = site
        .cgi("tokens", "POST")
        .query("action=rotate&profile=deploy")
        .header("authorization", &format!("Bearer {admin}"))
        .run();
    assert_timed_out(&a, &key);

    // Verification reads without the lock: the lock is held for the whole block, so a
    // verification that tried to take it would end in a lock timeout (503), never 204.
    // No timing is asserted (timings on shared machines are noise).
    let a = site
        .cgi("tokens", "GET")
        .query("profile=deploy")
        .header("authorization", &format!("Bearer {token}"))
        .run();
    assert_eq!(a.status, 204, "{}", a.text());
    drop(held);

    let a = site
        .cgi("tokens", "POST")
        .query("action=rotate&profile=deploy")
        .header("authorization", &format!("Bearer {admin}"))
        .run();
    assert_eq!(a.status, 200, "{}", a.text());
}
