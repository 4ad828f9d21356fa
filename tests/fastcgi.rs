//! FastCGI mode: the real executables started by real `spawn-fcgi` with a listening socket
//! on fd 0 (unix and TCP) serve the same flows as under CGI, keep each request's
//! environment to that request, take real flocks per request (so requests inside one
//! responder contend with each other and with CGI processes exactly as processes do), and
//! survive malformed and early-closed connections.

pub mod client;
pub mod responder;

use crate::util::*;
use client::*;
use formwarden::lock::LockKey;
use responder::{Responder, Spawn};
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

fn challenges(site: &Site) -> usize {
    site.files("tmp/captcha")
        .iter()
        .filter(|f| f.ends_with(".toml"))
        .count()
}

/// The CGI flow, over FastCGI: a PNG challenge with its cookie, a message accepted with
/// the right answer and stored, the replay of the same challenge refused.
fn captcha_then_contact(site: &Site, captcha: &Endpoint, contact: &Endpoint) {
    let addr = "198.51.100.20";
    let a = site.cgi("captcha", "GET").remote_addr(addr).run_on(captcha);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("image/png"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert!(a.body.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG body");
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str())
    );
    let id = a.cookie("fw_captcha").expect("challenge cookie");
    let answer = a
        .header("x-formwarden-test-answer")
        .expect("answer")
        .to_string();

    let form = site.cgi("contact", "GET").run_on(contact);
    assert_eq!(form.status, 200);
    assert!(form.text().contains("<form"), "the contact form");

    // The POST and its replay share one kept-open connection, as nginx with
    // `fastcgi_keep_conn on` would send them.
    let post = site
        .cgi("contact", "POST")
        .remote_addr(addr)
        .captcha_cookie(&id)
        .form(&good_form(&answer));
    let mut conn = contact.connect().expect("connect");
    let a = post.send(&mut conn, 1, true).expect("post");
    assert!(
        a.status == 200 || a.status == 202,
        "accepted: {} {}",
        a.status,
        a.text()
    );
    let stored = site.ls("spool/new").len() + site.ls("mail-out").len();
    assert_eq!(stored, 1, "the message is in the spool or the mail folder");
    let replay = post.send(&mut conn, 2, false).expect("replay");
    assert_eq!(replay.status, 403, "a used challenge never passes again");
    assert_eq!(
        site.ls("spool/new").len() + site.ls("mail-out").len(),
        1,
        "the replay stored nothing"
    );
}

#[test]
fn the_cgi_flow_works_over_a_unix_socket() {
    let site = Site::new();
    let captcha = Spawn::unix("captcha", site.root()).start();
    let contact = Spawn::unix("contact", site.root()).start();
    captcha_then_contact(&site, &captcha.endpoint, &contact.endpoint);
}

#[test]
fn the_cgi_flow_works_over_tcp() {
    let site = Site::new();
    let captcha = Spawn::tcp("captcha", site.root()).start();
    let contact = Spawn::tcp("contact", site.root()).start();
    captcha_then_contact(&site, &captcha.endpoint, &contact.endpoint);
}

/// `FCGI_WEB_SERVER_ADDRS` (FastCGI spec, 3.2): a TCP peer that is not listed is
/// closed on without an answer, even with a well-formed request, and said so in the log;
/// a listed one is served; a list with no valid address admits nobody.
#[test]
fn fcgi_web_server_addrs_refuses_unlisted_peers() {
    let site = Site::new();
    for (list, admitted) in [
        ("192.0.2.7", false),
        ("not-an-address", false),
        ("192.0.2.7, 127.0.0.1", true),
    ] {
        let r = Spawn::tcp("captcha", site.root())
            .env("FCGI_WEB_SERVER_ADDRS", list)
            .start();
        let mut c = r.endpoint.connect().expect("connect");
        let answer = site.cgi("captcha", "GET").send(&mut c, 1, false);
        if admitted {
            let a = answer.expect("a listed peer is served");
            assert_eq!(a.status, 200, "{list}: {}", a.text());
        } else {
            assert!(answer.is_err(), "{list}: an unlisted peer got an answer");
            assert!(
                r.log().contains(responder::REFUSED_PEER_LOG),
                "{list}: {}",
                r.log()
            );
            assert!(
                !r.log().contains("127.0.0.1"),
                "the peer's address is not logged"
            );
        }
    }
}

#[test]
fn tokens_verify_and_rotate_over_fastcgi() {
    let site = Site::new();
    let token = site.rotate("deploy");
    let admin = site.rotate("admin");
    // Started without GATEWAY_INTERFACE, as spawn-fcgi does: the listening socket on fd 0
    // alone must make `tokens` a web endpoint instead of its command line.
    let r = Spawn::unix("tokens", site.root()).start();
    let verify = |t: &str| {
        site.cgi("tokens", "GET")
            .query("profile=deploy")
            .header("authorization", &format!("Bearer {t}"))
            .run_on(&r.endpoint)
    };
    assert_eq!(verify(&token).status, 204);
    // A wrong token is refused as unauthorized, not by some other failure (a 500 is not
    // "refused").
    assert_eq!(verify("not-a-token").status, 401);
    let rotate = site
        .cgi("tokens", "POST")
        .query("action=rotate&profile=deploy")
        .header("authorization", &format!("Bearer {admin}"))
        .run_on(&r.endpoint);
    assert_eq!(rotate.status, 200, "{}", rotate.text());
    // The previous token stays valid for its grace period.
    assert_eq!(verify(&token).status, 204);
}

/// Issue 7, item 1: a FastCGI peer must not choose the runtime root. The responder is
/// started for root A; requests whose parameters name root B (as any peer of the socket can
/// write them) are served from A, and nothing at all lands in B.
#[test]
fn the_runtime_root_is_fixed_at_start_and_no_request_can_change_it() {
    let (site_a, site_b) = (Site::new(), Site::new());
    let b_before = site_b.tree();
    // Values only in the responder's process environment; apart from the root, none may
    // reach a request.
    let leaked_addr = "203.0.113.99";
    let mut responder = Spawn::unix("captcha", site_a.root())
        .env("REMOTE_ADDR", leaked_addr)
        .env("HTTP_ACCEPT", "application/json")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .start();
    let ep = responder.endpoint.clone();

    // Three requests on one kept-open connection, two of them naming root B.
    let mut conn = ep.connect().expect("connect");
    let to_b = site_b.cgi("captcha", "GET").remote_addr("198.51.100.1");
    assert_eq!(
        to_b.vars().get("FORMWARDEN_ROOT").map(String::as_str),
        Some(site_b.root().to_str().expect("utf-8 path")),
        "the request really names root B"
    );
    let a = to_b.send(&mut conn, 1, true).expect("first");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("content-type"),
        Some("image/png"),
        "the process's HTTP_ACCEPT must not make this a JSON request"
    );
    let to_a = site_a.cgi("captcha", "GET").remote_addr("198.51.100.2");
    assert_eq!(to_a.send(&mut conn, 2, true).expect("second").status, 200);
    let no_addr = site_b.cgi("captcha", "GET").unset("REMOTE_ADDR");
    assert_eq!(
        no_addr.send(&mut conn, 3, false).expect("third").status,
        200
    );
    assert_eq!(site_a.stored_count("198.51.100.1", "captcha_get"), Some(1));
    assert_eq!(site_a.stored_count("198.51.100.2", "captcha_get"), Some(1));
    assert_eq!(
        site_a.stored_count(leaked_addr, "captcha_get"),
        None,
        "the process's REMOTE_ADDR must never be a request's client"
    );
    assert_eq!(challenges(&site_a), 3);

    // Concurrent requests on separate connections, half of them naming root B: all are
    // counted in A.
    let roots = [site_a.root().to_path_buf(), site_b.root().to_path_buf()];
    let addrs = ["198.51.100.7", "198.51.100.8"];
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let (ep, root, addr) = (ep.clone(), roots[i % 2].clone(), addrs[(i / 2) % 2]);
            thread::spawn(move || {
                Cgi::new(&root, "captcha", "GET")
                    .remote_addr(addr)
                    .run_on(&ep)
                    .status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("join"), 200);
    }
    for addr in addrs {
        assert_eq!(site_a.stored_count(addr, "captcha_get"), Some(12));
    }
    assert_eq!(
        site_b.tree(),
        b_before,
        "nothing was written to the root the requests named"
    );
    assert!(responder.alive());
}

#[test]
fn a_request_inside_the_responder_waits_on_a_real_flock() {
    let site = Site::new();
    let responder = Spawn::unix("captcha", site.root()).start();
    let addr = "192.0.2.10";
    let key = LockKey::ratelimit(&client_key(addr));
    let held = site.hold_lock(&key);
    let req = site.cgi("captcha", "GET").remote_addr(addr);
    let a = req.run_on(&responder.endpoint);
    let expected = assert_lock_timeout(&a, &key);
    assert!(
        responder.log().contains(&expected),
        "the responder logs the key to its stderr: {}",
        responder.log()
    );
    assert_eq!(challenges(&site), 0, "no challenge while refused");
    drop(held);
    assert_eq!(req.run_on(&responder.endpoint).status, 200);
}

/// Issue 7, item 5: a holder that never releases costs a long-lived responder at most
/// `lock::MAX_HELPERS` helper threads, however many requests time out on it.
#[test]
fn a_stuck_lock_holder_does_not_pile_up_threads_in_the_responder() {
    let site = Site::new();
    let mut responder = Spawn::unix("captcha", site.root()).start();
    let addr = "192.0.2.11";
    let key = LockKey::ratelimit(&client_key(addr));
    let _held = site.hold_lock(&key);
    let before = responder.threads();
    let n = 3 * formwarden::lock::MAX_HELPERS;
    for _ in 0..n {
        let a = site
            .cgi("captcha", "GET")
            .remote_addr(addr)
            .run_on(&responder.endpoint);
        assert_eq!(a.status, 503, "{}", a.text());
    }
    let after = responder.threads();
    assert!(before > 0, "the thread count is readable");
    assert!(
        after <= before + formwarden::lock::MAX_HELPERS + 4,
        "{n} timed-out requests left {after} threads (before: {before})"
    );
    // Other clients are still served.
    let a = site
        .cgi("captcha", "GET")
        .remote_addr("192.0.2.12")
        .run_on(&responder.endpoint);
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(responder.alive());
}

#[test]
fn fastcgi_threads_fastcgi_children_and_cgi_processes_share_one_limit() {
    let site = Site::with("captcha_max_get = 40", "");
    let addr = "203.0.113.5";
    // One responder process serving many connections on its threads, two more processes
    // forked by spawn-fcgi on one TCP socket, and plain CGI processes.
    let threaded = Spawn::unix("captcha", site.root()).start();
    let forked = Spawn::tcp("captcha", site.root()).children(2).start();
    let (n_threaded, n_forked, n_cgi) = (40, 16, 24);
    let total = n_threaded + n_forked + n_cgi;

    let start = Arc::new(Barrier::new(n_threaded + n_forked + 1));
    let mut threads = Vec::new();
    for i in 0..n_threaded + n_forked {
        let ep = if i < n_threaded {
            threaded.endpoint.clone()
        } else {
            forked.endpoint.clone()
        };
        let req = site.cgi("captcha", "GET").remote_addr(addr);
        let start = Arc::clone(&start);
        threads.push(thread::spawn(move || {
            // Connect only when all go: a web server sends its request right after
            // connecting, and the responder may close connections that stay silent.
            start.wait();
            let mut conn = ep.connect().expect("connect");
            req.send(&mut conn, 1, false).expect("exchange")
        }));
    }
    let cgi = site.cgi("captcha", "GET").remote_addr(addr);
    let children: Vec<_> = (0..n_cgi).map(|_| cgi.spawn()).collect();
    start.wait();
    let mut answers: Vec<Answer> = threads
        .into_iter()
        .map(|t| t.join().expect("join"))
        .collect();
    answers.extend(collect(children));

    let (ok, limited, timeouts) = tally(&answers);
    eprintln!(
        "one key, {n_threaded} FastCGI requests on one responder's threads + {n_forked} on 2 \
         forked responders + {n_cgi} CGI processes: {ok} admitted, {limited} limited, \
         {timeouts} lock timeouts (target 0)"
    );
    assert_eq!(
        ok + limited + timeouts,
        total,
        "every request answered 200, 429 or 503"
    );
    assert_eq!(
        ok,
        40.min(total - timeouts),
        "admitted exactly what the limit allows"
    );
    assert_eq!(
        site.stored_count(addr, "captcha_get"),
        Some(ok as u64),
        "stored counter equals admitted requests"
    );
    assert_eq!(challenges(&site), ok, "one challenge per admitted request");
    assert!(
        answers
            .iter()
            .filter(|a| a.status == 429)
            .all(|a| a.header("retry-after").is_some()),
        "every 429 carries Retry-After"
    );
}

/// After each hostile exchange the responder is still alive and answers a normal request.
fn still_serves(r: &mut Responder, site: &Site, what: &str) {
    let a = site.cgi("captcha", "GET").run_on(&r.endpoint);
    assert_eq!(a.status, 200, "after {what}: {}", a.text());
    assert!(r.alive(), "the responder died after {what}");
}

/// Sends `bytes`, closes our side and expects the responder to close without an answer.
fn refused(ep: &Endpoint, bytes: &[u8], what: &str) {
    let mut c = ep.connect().expect("connect");
    let _ = c.write_all(bytes);
    c.shutdown_write();
    let (got, closed) = c.drain();
    assert!(closed, "{what}: the responder must close the connection");
    assert!(got.is_empty(), "{what}: no answer expected, got {got:?}");
}

fn hostile_exchanges(r: &mut Responder, site: &Site) {
    let ep = r.endpoint.clone();
    let good = site.cgi("captcha", "GET");

    refused(
        &ep,
        b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        "HTTP instead of FastCGI",
    );
    still_serves(r, site, "garbage");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    refused(&ep, &noise, "random bytes");
    still_serves(r, site, "random bytes");

    refused(&ep, &[1, BEGIN_REQUEST, 0], "a truncated header");
    still_serves(r, site, "a truncated header");

    let mut huge = begin(1, RESPONDER, false);
    huge.extend_from_slice(&[1, PARAMS, 0, 1, 0xff, 0xff, 0xff, 0]);
    huge.extend_from_slice(&[0x41; 100]);
    refused(
        &ep,
        &huge,
        "a record announcing 65535 + 255 bytes and sending 100",
    );
    still_serves(r, site, "a huge content length");

    let mut lying = begin(1, RESPONDER, false);
    lying.extend(record(PARAMS, 1, &[0xff, 0xff, 0xff, 0xff, 1, b'A', b'b']));
    lying.extend(record(PARAMS, 1, &[]));
    lying.extend(record(STDIN, 1, &[]));
    refused(&ep, &lying, "a name length of 2^31 - 1");
    still_serves(r, site, "a name length beyond its record");

    // Closed mid-PARAMS, with and without closing our side first.
    let encoded = good.encode(1, false);
    for cut in [20, 40, encoded.len() / 2] {
        let mut c = ep.connect().expect("connect");
        c.write_all(&encoded[..cut]).expect("send");
        drop(c);
    }
    still_serves(r, site, "connections closed mid-PARAMS");

    // Closed before reading the answer: the responder's write fails, nothing else.
    for _ in 0..8 {
        let mut c = ep.connect().expect("connect");
        c.write_all(&encoded).expect("send");
        drop(c);
    }
    still_serves(r, site, "connections closed before the answer");

    // The Authorizer role is refused with UNKNOWN_ROLE, and the connection closes.
    let mut c = ep.connect().expect("connect");
    c.write_all(&begin(7, AUTHORIZER, false)).expect("send");
    let reply = c.read_reply(7).expect("an END_REQUEST");
    assert_eq!(reply.protocol_status, UNKNOWN_ROLE);
    assert!(reply.stdout.is_empty());
    assert!(c.drain().1, "closed after the refusal");
    still_serves(r, site, "an AUTHORIZER request");

    // FCGI_GET_VALUES and an unknown management record, then a request on the same
    // connection.
    let mut c = ep.connect().expect("connect");
    let query = pairs([
        ("FCGI_MAX_CONNS", ""),
        ("FCGI_MAX_REQS", ""),
        ("FCGI_MPXS_CONNS", ""),
        ("NOT_A_VARIABLE", ""),
    ]);
    c.write_all(&record(GET_VALUES, 0, &query)).expect("send");
    let (kind, id, content) = c.read_record().expect("GET_VALUES_RESULT");
    assert_eq!((kind, id), (GET_VALUES_RESULT, 0));
    let values = parse_pairs(&content);
    let value = |n: &str| values.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(value("FCGI_MPXS_CONNS").as_deref(), Some("0"));
    assert_eq!(value("FCGI_MAX_CONNS").as_deref(), Some("32"));
    assert_eq!(value("FCGI_MAX_REQS").as_deref(), Some("32"));
    assert_eq!(value("NOT_A_VARIABLE"), None);
    c.write_all(&record(200, 0, b"")).expect("send");
    let (kind, _, content) = c.read_record().expect("UNKNOWN_TYPE");
    assert_eq!((kind, content.first().copied()), (UNKNOWN_TYPE, Some(200)));
    assert_eq!(good.send(&mut c, 1, false).expect("request").status, 200);

    // A second request id while one runs is refused; the first one is answered.
    let mut c = ep.connect().expect("connect");
    let mut both = begin(2, RESPONDER, false);
    both.extend(begin(3, RESPONDER, false));
    both.extend_from_slice(&good.encode(2, false)[16..]);
    c.write_all(&both).expect("send");
    let reply = c.read_reply(2).expect("answer to request 2");
    assert_eq!(reply.protocol_status, REQUEST_COMPLETE);
    assert!(reply.stdout.starts_with(b"Status: 200"));
    assert!(
        reply
            .others
            .iter()
            .any(|(k, id, body)| *k == END_REQUEST && *id == 3 && body[4] == CANT_MPX_CONN),
        "request 3 refused with CANT_MPX_CONN: {:?}",
        reply.others
    );

    // An aborted request is ended without an answer.
    let mut c = ep.connect().expect("connect");
    let mut aborted = begin(4, RESPONDER, true);
    aborted.extend(record(ABORT_REQUEST, 4, b""));
    c.write_all(&aborted).expect("send");
    let reply = c.read_reply(4).expect("END_REQUEST");
    assert!(reply.stdout.is_empty());
    assert_eq!(good.send(&mut c, 5, false).expect("next").status, 200);

    // PARAMS beyond 64 KiB get a 400, not a dead process.
    let big = good.clone().header("x-padding", &"p".repeat(70 * 1024));
    assert_eq!(big.run_on(&ep).status, 400);
    still_serves(r, site, "oversized PARAMS");

    // More silent connections than the responder serves at once: a real request still
    // gets through, because connections that wait without a request make room.
    let silent: Vec<_> = (0..40).map(|_| ep.connect().expect("connect")).collect();
    let t = Instant::now();
    still_serves(r, site, "40 silent connections");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "silent connections must not pin the responder: {:?}",
        t.elapsed()
    );
    drop(silent);
    still_serves(r, site, "the silent connections closing");
}

#[test]
fn malformed_and_early_closed_connections_never_take_the_responder_down() {
    let site = Site::new();
    let mut r = Spawn::unix("captcha", site.root()).start();
    hostile_exchanges(&mut r, &site);
    assert!(
        !r.log().contains("panicked"),
        "no panic in the responder: {}",
        r.log()
    );
    let mut r = Spawn::tcp("captcha", site.root()).start();
    hostile_exchanges(&mut r, &site);
}

#[test]
fn throughput_over_a_unix_socket_is_reported() {
    let site = Site::new();
    let responder = Spawn::unix("captcha", site.root()).start();
    let (workers, each) = (8, 40);
    let t = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let ep = responder.endpoint.clone();
            let req = site
                .cgi("captcha", "GET")
                .remote_addr(&format!("198.51.100.{}", 100 + w));
            thread::spawn(move || (0..each).filter(|_| req.run_on(&ep).status == 200).count())
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
    let fcgi = t.elapsed();
    assert_eq!(ok, workers * each);

    // The same number of CGI processes, 8 at a time, for comparison.
    let t = Instant::now();
    for _ in 0..each {
        let children: Vec<_> = (0..workers)
            .map(|w| {
                site.cgi("captcha", "GET")
                    .remote_addr(&format!("198.51.100.{}", 200 + w))
                    .spawn()
            })
            .collect();
        assert!(collect(children).iter().all(|a| a.status == 200));
    }
    let cgi = t.elapsed();
    let rate = |d: Duration| (workers * each) as f64 / d.as_secs_f64();
    eprintln!(
        "captcha GET, {workers} concurrent, {} requests: FastCGI over a unix socket {:.0} req/s, \
         CGI processes {:.0} req/s",
        workers * each,
        rate(fcgi),
        rate(cgi)
    );
}

#[test]
fn a_responder_keeps_its_config_until_one_of_its_files_changes() {
    // A FastCGI responder builds its services once (no config parse, no folder creation
    // per request) but must see an operator's FTP edit at once, a broken edit included:
    // the broken config is reported, never papered over with the last good one.
    let site = Site::new();
    let captcha = Spawn::unix("captcha", site.root()).start();
    let config = site.var("config/config.toml");
    let good = std::fs::read_to_string(&config).expect("config");
    let get = |addr: &str| {
        site.cgi("captcha", "GET")
            .remote_addr(addr)
            .run_on(&captcha.endpoint)
    };
    for _ in 0..3 {
        assert_eq!(
            get("198.51.100.30").status,
            200,
            "the generous default limit"
        );
    }

    std::fs::write(
        &config,
        good.replace("captcha_max_get = 1000", "captcha_max_get = 1"),
    )
    .expect("edit config");
    assert_eq!(
        get("198.51.100.31").status,
        200,
        "the first image under the new limit"
    );
    assert_eq!(
        get("198.51.100.31").status,
        429,
        "the edited limit holds at once"
    );

    std::fs::write(&config, "ip_salt = [broken").expect("break config");
    let broken = get("198.51.100.32");
    assert_eq!(
        broken.status,
        500,
        "a broken config is reported: {}",
        broken.text()
    );
    assert!(
        !broken.text().contains(&site.root().display().to_string()),
        "without the server's paths: {}",
        broken.text()
    );

    std::fs::write(&config, &good).expect("restore config");
    assert_eq!(get("198.51.100.31").status, 200, "the old limit is back");

    // A list file beside the config is an input too: one grown past its size limit is
    // reported at once, and its removal is seen at once.
    let words = site.var("config/blocked-words.txt");
    std::fs::write(&words, "spam\n".repeat(300_000)).expect("list file");
    let a = get("198.51.100.33");
    std::fs::remove_file(&words).expect("remove list file");
    let b = get("198.51.100.33");
    assert_eq!(
        (a.status, b.status),
        (500, 200),
        "{} / {}",
        a.text(),
        b.text()
    );
}
