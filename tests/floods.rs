//! Issue 7, items 6 and 7: floods of distinct clients and of made-up challenge ids leave
//! no unbounded state behind. A never-issued challenge id creates no file at all; lock
//! files without state are swept; stored windows and outstanding challenges stay under
//! their configured ceilings (oldest windows evicted, new challenges refused with a 503);
//! and a visitor's request does a bounded amount of housekeeping however much is stored.

use crate::util::*;

fn random_hex(n: usize) -> String {
    let mut out = String::new();
    while out.len() < n {
        out.push_str(&format!("{:016x}", rand_u64()));
    }
    out.truncate(n);
    out
}

/// A random number from the OS, without a dependency.
fn rand_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    u64::from_le_bytes(b)
}

fn count_prefix(files: &[String], prefix: &str) -> usize {
    files.iter().filter(|f| f.starts_with(prefix)).count()
}

/// Runs `reqs` as CGI processes, 16 at a time, and returns their answers.
fn run_all(reqs: Vec<Cgi>) -> Vec<Answer> {
    let mut out = Vec::new();
    for chunk in reqs.chunks(16) {
        out.extend(collect(chunk.iter().map(Cgi::spawn).collect()));
    }
    out
}

/// With the smallest ceiling (256, one entry per shard), no shard holds more than one file.
fn assert_at_most_one_per_shard(files: &[String]) {
    let mut per_shard = std::collections::HashMap::new();
    for f in files {
        *per_shard
            .entry(formwarden::shard::of(f.trim_end_matches(".toml")))
            .or_insert(0) += 1;
    }
    assert!(per_shard.values().all(|&n| n <= 1), "{per_shard:?}");
}

#[test]
fn made_up_challenge_ids_from_many_clients_leave_no_lock_files() {
    let site = Site::new();
    let (live_id, live_answer) = site.challenge("192.0.2.10");
    let before = site.files("lock").len();
    // 1,000 clients, one IPv6 /64 each (cheap for an attacker), each posting a
    // well-formed id that was never issued.
    let reqs: Vec<Cgi> = (0..1000)
        .map(|i| {
            site.contact_post(&random_hex(32), "ACDE")
                .remote_addr(&format!("2001:db8:{:x}:{:x}::1", i / 256, i % 256))
        })
        .collect();
    let answers = run_all(reqs);
    assert!(
        answers.iter().all(|a| a.status == 403),
        "every made-up id is refused: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let locks = site.files("lock");
    assert_eq!(
        count_prefix(&locks, "captcha_"),
        1,
        "only the issued challenge has a lock file: {:?}",
        locks
            .iter()
            .filter(|f| f.starts_with("captcha_"))
            .collect::<Vec<_>>()
    );
    assert!(
        site.files("tmp/captcha").len() == 1,
        "no challenge file either"
    );

    // Once the clients' windows have ended, a sweep leaves the lock folder no larger than
    // before the flood; the live challenge and its lock stay.
    site.advance_clock(3700);
    let live_site_answer = site.contact_post(&live_id, &live_answer).run();
    assert_eq!(
        live_site_answer.status, 403,
        "the challenge expired meanwhile (lifetime < 3700 s)"
    );
    let out = site.tokens_cli(&["sweep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = site.files("lock").len();
    assert!(
        after <= before,
        "lock files after the sweep: {after}, before the flood: {before}"
    );
}

#[test]
fn orphan_lock_files_are_swept_and_live_ones_kept() {
    let site = Site::new();
    let (live_id, _) = site.challenge("192.0.2.10");
    // Lock files whose state never came (a process killed between its lock and its write).
    let orphans: Vec<String> = (0..5).map(|_| random_hex(32)).collect();
    for id in &orphans {
        drop(site.hold_lock(&formwarden::lock::LockKey::captcha(id)));
    }
    let stale_window = formwarden::lock::LockKey::ratelimit(&random_hex(64));
    drop(site.hold_lock(&stale_window));
    let locks = site.files("lock");
    assert_eq!(count_prefix(&locks, "captcha_"), 6);
    let out = site.tokens_cli(&["sweep"]);
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("locks: 6"), "{report}");
    let locks = site.files("lock");
    assert_eq!(
        locks
            .iter()
            .filter(|f| f.starts_with("captcha_"))
            .collect::<Vec<_>>(),
        vec![&format!("captcha_{live_id}.lock")]
    );
    assert!(!locks.contains(&format!("{}.lock", stale_window.as_str())));
    assert!(
        locks.contains(&format!(
            "{}.lock",
            formwarden::lock::LockKey::ratelimit(&client_key("192.0.2.10")).as_str()
        )),
        "a live window keeps its lock file"
    );
}

#[test]
fn outstanding_challenges_stop_at_their_ceiling_with_a_503() {
    // 256 is the smallest ceiling: one challenge per shard.
    let site = Site::with("max_challenges = 256", "");
    let reqs: Vec<Cgi> = (0..100)
        .map(|i| {
            site.cgi("captcha", "GET")
                .remote_addr(&format!("198.51.100.{i}"))
        })
        .collect();
    // One at a time: the ceiling is checked before a creation, so requests running at the
    // same moment can each pass it (the overshoot is bounded by that concurrency).
    let answers: Vec<Answer> = reqs.iter().map(Cgi::run).collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    let served = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(refused.len() + served, 100, "only 200s and 503s");
    // 100 random ids over 256 shards: some shard gets a second one (all but certain).
    assert!(!refused.is_empty(), "the ceiling refused some");
    for a in &refused {
        assert!(a.header("retry-after").is_some());
        assert!(a.text().contains("security image"), "{}", a.text());
        assert!(a.stderr.contains("ceiling"), "{}", a.stderr);
    }
    let files = site.files("tmp/captcha");
    assert_eq!(files.len(), served, "one file per served challenge");
    assert!(files.len() <= 256);
    assert_at_most_one_per_shard(&files);
}

#[test]
fn stored_windows_stop_at_their_ceiling_by_evicting_the_oldest() {
    let site = Site::with("max_windows = 256", "");
    let reqs: Vec<Cgi> = (0..300)
        .map(|i| {
            site.cgi("captcha", "GET")
                .remote_addr(&format!("2001:db8:77:{i:x}::1"))
        })
        .collect();
    // One at a time, so "oldest" is well defined.
    let answers: Vec<Answer> = reqs.iter().map(Cgi::run).collect();
    assert!(
        answers.iter().all(|a| a.status == 200),
        "a full table never refuses a visitor"
    );
    let windows = site.files("tmp/ratelimit");
    assert!(windows.len() <= 256, "{} windows", windows.len());
    assert_at_most_one_per_shard(&windows);
    // The newest client's window is there.
    assert_eq!(
        site.stored_count("2001:db8:77:12b::1", "captcha_get"),
        Some(1)
    );
}

#[test]
fn a_visitor_request_sweeps_a_bounded_amount_however_much_is_stored() {
    let site = Site::with("rate_limit_window_seconds = 60", "");
    // 3,000 ended windows, all in shard 00, where the first sweep step goes.
    let dir = site.var("tmp/ratelimit/00");
    std::fs::create_dir_all(&dir).expect("shard folder");
    let mut planted = 0;
    while planted < 3000 {
        let key = random_hex(64);
        if formwarden::shard::of(&key) != "00" {
            continue;
        }
        std::fs::write(
            dir.join(format!("{key}.toml")),
            "window_start = 1000\ncaptcha_get = 1\ncontact_post = 0\n",
        )
        .expect("plant");
        planted += 1;
    }
    site.advance_clock(120);
    let a = site.cgi("captcha", "GET").remote_addr("192.0.2.99").run();
    assert_eq!(a.status, 200, "{}", a.text());
    let left = std::fs::read_dir(&dir).expect("list").count();
    let removed = 3000 - left.min(3000);
    assert!(
        removed <= formwarden::sweep::STEP_BUDGET,
        "one request removed {removed}, more than a step's budget"
    );
    assert!(removed > 0, "the step did sweep");
    // The operator's full sweep takes the rest at once.
    let out = site.tokens_cli(&["sweep"]);
    assert!(out.status.success());
    assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0);
}
