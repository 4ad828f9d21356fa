//! The Redis store (issue 11), proven the way the file store is: the real executables as
//! separate processes, here over two runtime roots that share one real `redis-server` on
//! loopback and play two web nodes behind a load balancer, with requests alternating
//! between them. Each test starts its own server on a free port, without persistence
//! unless it needs it, so no test sees another's keys.

use crate::util::net::{free_port, wait_for_port};
use crate::util::*;
use formwarden::lock::LockKey;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "fwtest:";

/// One `redis-server` on a loopback port, stopped when dropped.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persist: bool,
    /// A TLS port beside the plain one, with the test CA's server certificate.
    tls: Option<(u16, PathBuf)>,
}

impl Redis {
    /// A server without persistence.
    fn start() -> Redis {
        Redis::start_with(false)
    }

    /// `persist`: an append-only file fsynced on every write, so that a server killed
    /// with SIGKILL comes back with every write it acknowledged.
    fn start_with(persist: bool) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            persist,
            tls: None,
        };
        r.launch();
        r
    }

    /// A server that also speaks TLS, with a certificate from a private test CA; returns
    /// it with the CA's certificate.
    fn start_tls() -> (Redis, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, _, _) = test_ca(dir.path());
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
            persist: false,
            tls: Some((free_port(), PathBuf::new())),
        };
        if let Some(tls) = r.tls.as_mut() {
            tls.1 = r.dir.path().to_path_buf();
        }
        r.launch();
        (r, ca)
    }

    /// The unix socket it listens on too.
    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700"]);
        if let Some((port, certs)) = &self.tls {
            cmd.args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(certs.join("server.pem"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.pem"));
        }
        if self.persist {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-test-deps.sh installs it)");
        self.child = Some(child);
        // Up means answering PING, not only accepting connections.
        assert!(
            wait_until(Duration::from_secs(10), || self.connect().is_ok()),
            "redis-server did not come up on port {}",
            self.port
        );
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let mut c = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(200))?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    fn conn(&self) -> redis::Connection {
        self.connect().expect("connect to the test redis-server")
    }

    /// The stored TOML under lock key `key`, if any.
    fn value(&self, key: &LockKey) -> Option<toml::Table> {
        let text: Option<String> = redis::cmd("GET")
            .arg(format!("{PREFIX}{}", key.as_str()))
            .query(&mut self.conn())
            .expect("GET");
        text.map(|t| toml::from_str(&t).expect("a stored value is valid TOML"))
    }

    /// The seconds `key` has left to live (-1: no expiry, -2: no key).
    fn ttl(&self, key: &LockKey) -> i64 {
        redis::cmd("TTL")
            .arg(format!("{PREFIX}{}", key.as_str()))
            .query(&mut self.conn())
            .expect("TTL")
    }

    /// SIGKILL, as a crash or an OOM kill would end it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            assert!(procs::signal(c.id() as i32, sig), "kill({sig})");
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// Two runtime roots (two web nodes) over `redis`, each with its own spool and mail
/// folder; `top` is extra top-level config.
fn nodes(redis: &Redis, top: &str) -> [Site; 2] {
    let store = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{PREFIX}\"\n",
        redis.url()
    );
    [Site::with(top, &store), Site::with(top, &store)]
}

/// One node reaching the store at `url`, with `extra` lines in `[store]`.
fn node_at(url: &str, extra: &str) -> Site {
    Site::with(
        "",
        &format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"{PREFIX}\"\n{extra}"),
    )
}

fn accepted(a: &Answer) -> bool {
    a.status == 200 || a.status == 202
}

/// Nothing of the shared state may be left in a node's own folders.
fn no_local_state(site: &Site) {
    for area in ["tmp/ratelimit", "tmp/captcha", "state/tokens"] {
        let files: Vec<PathBuf> = walk(&site.var(area))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        assert!(files.is_empty(), "{area} holds {files:?}");
    }
}

#[test]
fn a_challenge_issued_on_node_a_passes_once_on_node_b_and_the_message_stays_on_b() {
    let redis = Redis::start();
    let [a, b] = nodes(&redis, "");
    let (id, answer) = a.challenge("198.51.100.1");
    let key = LockKey::captcha(&id);
    let stored = redis.value(&key).expect("the challenge is in Redis");
    assert!(!stored["used"].as_bool().expect("used"));
    // Kept for twice the lifetime (900 s), so a late answer is told "expired".
    let ttl = redis.ttl(&key);
    assert!((1700..=1800).contains(&ttl), "ttl {ttl}");

    let first = b.contact_post(&id, &answer).run();
    assert!(accepted(&first), "{}", first.text());
    assert!(
        redis.value(&key).expect("kept as used")["used"]
            .as_bool()
            .expect("used")
    );
    // The used challenge keeps its TTL.
    assert!(redis.ttl(&key) > 1700);
    for node in [&a, &b] {
        let replay = node.contact_post(&id, &answer).run();
        assert_eq!(replay.status, 403, "replay: {}", replay.text());
    }
    // The accepted message is in B's own spool or mailbox, and only there.
    b.cli("spool", &["deliver"]);
    assert_eq!((a.delivered(), b.delivered()), (0, 1));
    no_local_state(&a);
    no_local_state(&b);
}

#[test]
fn sixteen_verifications_of_one_challenge_on_two_nodes_pass_once() {
    let redis = Redis::start();
    let [a, b] = nodes(&redis, "");
    for round in 0..3 {
        let (id, answer) = a.challenge(&format!("198.51.100.{}", 10 + round));
        let children: Vec<Child> = (0..16)
            .map(|i| [&a, &b][i % 2].contact_post(&id, &answer).spawn())
            .collect();
        let answers = collect(children);
        let passed = answers.iter().filter(|a| accepted(a)).count();
        let refused = answers.iter().filter(|a| a.status == 403).count();
        assert_eq!(
            (passed, refused),
            (1, 15),
            "round {round}: {:?}",
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
    }
    for s in [&a, &b] {
        s.cli("spool", &["deliver"]);
    }
    assert_eq!(a.delivered() + b.delivered(), 3);
}

#[test]
fn wrong_answers_are_bounded_across_nodes() {
    let redis = Redis::start();
    let [a, b] = nodes(&redis, "captcha_max_attempts = 3");
    let (id, answer) = a.challenge("198.51.100.20");
    for i in 0..3 {
        let wrong = [&a, &b][i % 2].contact_post(&id, "WWWWW").run();
        assert_eq!(wrong.status, 403, "{}", wrong.text());
    }
    // Burnt after three wrong answers: the right one no longer passes on either node.
    let late = b.contact_post(&id, &answer).run();
    assert_eq!(late.status, 403, "{}", late.text());
    let stored = redis.value(&LockKey::captcha(&id)).expect("kept");
    assert_eq!(stored["attempts"].as_integer(), Some(3));
}

#[test]
fn a_clients_budget_is_shared_by_both_nodes_with_exact_accounting() {
    let redis = Redis::start();
    let [a, b] = nodes(&redis, "captcha_max_get = 12");
    let addr = "203.0.113.7";
    let children: Vec<Child> = (0..40)
        .map(|i| {
            [&a, &b][i % 2]
                .cgi("captcha", "GET")
                .remote_addr(addr)
                .spawn()
        })
        .collect();
    let answers = collect(children);
    let (ok, limited, timeouts) = tally(&answers);
    assert_eq!(
        ok + limited + timeouts,
        40,
        "only 200, 429 and lock timeouts"
    );
    assert!(ok <= 12, "never over the limit: {ok}");
    let key = LockKey::ratelimit(&client_key(addr));
    let stored = redis.value(&key).expect("window in Redis");
    assert_eq!(
        stored["captcha_get"].as_integer(),
        Some(ok as i64),
        "the counter equals the admitted answers"
    );
    if timeouts == 0 {
        assert_eq!(ok, 12, "without timeouts every slot of the budget is used");
    }
    // The window's key expires with the window (an hour by default), so Redis needs no
    // sweep and no ceiling.
    let ttl = redis.ttl(&key);
    assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
    // The raw address never reaches Redis: not in a key, not in a value.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.conn())
        .expect("KEYS");
    for k in &keys {
        assert!(k.starts_with(PREFIX) && !k.contains(addr), "{k}");
        // Values, and the lock wake-up lists beside them.
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query(&mut redis.conn())
            .expect("TYPE");
        let v: Vec<String> = if kind == "list" {
            redis::cmd("LRANGE")
                .arg(k)
                .arg(0)
                .arg(-1)
                .query(&mut redis.conn())
        } else {
            redis::cmd("GET")
                .arg(k)
                .query(&mut redis.conn())
                .map(|v: String| vec![v])
        }
        .expect("read key");
        assert!(!v.iter().any(|v| v.contains(addr)), "{k} = {v:?}");
    }
    no_local_state(&a);
}

#[test]
fn token_rotations_on_both_nodes_are_never_lost_while_verifiers_read() {
    let redis = Redis::start();
    let [a, b] = nodes(&redis, "");
    let first = a.rotate("deploy");
    let verifier = |site: &Site, token: &str| {
        site.cgi("tokens", "GET")
            .query("profile=deploy")
            .header("authorization", &format!("Bearer {token}"))
            .spawn()
    };
    let mut rotations = Vec::new();
    let mut verifications = Vec::new();
    for i in 0..24 {
        let node = [&a, &b][i % 2];
        rotations.push(
            Command::new(exe("tokens"))
                .args(["rotate", "deploy"])
                .env_clear()
                .env("FORMWARDEN_ROOT", node.root())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("tokens rotate"),
        );
        verifications.push(verifier([&b, &a][i % 2], &first));
    }
    let mut issued = Vec::new();
    for c in rotations {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        issued.push(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        );
    }
    // The first token stays valid through its grace period, whatever was being written.
    for v in collect(verifications) {
        assert_eq!(v.status, 204, "verify during rotations: {}", v.text());
    }
    let list = redis
        .value(&LockKey::token("deploy"))
        .expect("list in Redis");
    assert_eq!(list["rotations"].as_integer(), Some(25), "no rotation lost");
    assert_eq!(
        redis.ttl(&LockKey::token("deploy")),
        -1,
        "token lists never expire"
    );
    // Every token issued on either node verifies on both.
    for t in issued.iter().chain([&first]) {
        for node in [&a, &b] {
            let v = verifier(node, t).wait_with_output().expect("wait");
            let a = Answer::parse(&v.stdout, &v.stderr, Duration::ZERO, v.status.code());
            assert_eq!(a.status, 204, "{t}: {}", a.text());
        }
    }
    no_local_state(&a);
    no_local_state(&b);
}

#[test]
fn a_redis_that_does_not_answer_gives_a_controlled_503_and_the_log_names_it() {
    let redis = Redis::start();
    let [a, _b] = nodes(&redis, "");
    // Writes held back on the server: the change cannot commit within the bound.
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "3000", "WRITE"])
        .query(&mut redis.conn())
        .expect("CLIENT PAUSE");
    let t = Instant::now();
    let paused = a.cgi("captcha", "GET").remote_addr("192.0.2.1").run();
    assert_eq!(paused.status, 503, "{}", paused.text());
    assert_eq!(paused.header("retry-after"), Some("5"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        t.elapsed()
    );
    assert!(
        paused.stderr.contains("shared store redis://127.0.0.1:")
            && paused.stderr.contains("no answer within 300 ms"),
        "the operator's log names the store: {}",
        paused.stderr
    );
    assert!(
        !paused.text().contains("redis://"),
        "visitors never see the store's address: {}",
        paused.text()
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut redis.conn())
        .expect("CLIENT UNPAUSE");

    // A process stopped outright (no answer at all, not even to connect's greeting).
    redis.signal(libc::SIGSTOP);
    let stopped = a.cgi("captcha", "GET").remote_addr("192.0.2.1").run();
    redis.signal(libc::SIGCONT);
    assert_eq!(stopped.status, 503, "{}", stopped.text());
    assert_eq!(stopped.header("retry-after"), Some("5"));

    // Nothing was stored for the refused requests; the next one is admitted.
    let back = a.cgi("captcha", "GET").remote_addr("192.0.2.1").run();
    assert_eq!(back.status, 200, "{}", back.text());
    let stored = redis
        .value(&LockKey::ratelimit(&client_key("192.0.2.1")))
        .expect("window");
    assert_eq!(stored["captcha_get"].as_integer(), Some(1));
}

#[test]
fn redis_killed_mid_burst_refuses_cleanly_admits_no_more_than_the_budget_and_comes_back() {
    let mut redis = Redis::start_with(true);
    let [a, b] = nodes(&redis, "captcha_max_get = 30");
    let addr = "203.0.113.9";
    let burst = |n: usize| -> Vec<Child> {
        (0..n)
            .map(|i| {
                [&a, &b][i % 2]
                    .cgi("captcha", "GET")
                    .remote_addr(addr)
                    .spawn()
            })
            .collect()
    };
    let before = collect(burst(10));
    let during = burst(30);
    std::thread::sleep(Duration::from_millis(15));
    redis.kill();
    let during = collect(during);
    let down = collect(burst(6));
    redis.restart();
    // A key lock whose holder lost its connection with the server came back with the
    // append-only file; it expires after one wait plus one command timeout (600 ms).
    std::thread::sleep(Duration::from_millis(700));
    let after = collect(burst(30));

    let all: Vec<&Answer> = before
        .iter()
        .chain(&during)
        .chain(&down)
        .chain(&after)
        .collect();
    for a in &all {
        assert!(
            matches!(a.status, 200 | 429 | 503),
            "only admitted, limited or unavailable: {} {}",
            a.status,
            a.text()
        );
        if a.status == 503 {
            assert!(a.header("retry-after").is_some(), "{}", a.text());
        }
    }
    assert!(
        down.iter().all(|a| a.status == 503),
        "no store, no admission"
    );
    let admitted = all.iter().filter(|a| a.status == 200).count();
    let stored = redis
        .value(&LockKey::ratelimit(&client_key(addr)))
        .expect("the window survived the restart")["captcha_get"]
        .as_integer()
        .expect("count") as usize;
    // An admission whose EXEC committed but whose answer was lost with the server counts
    // without being seen (the safe direction); never the other way.
    assert!(admitted <= stored, "admitted {admitted} > stored {stored}");
    assert!(stored <= 30, "over the budget: {stored}");
    assert!(after.iter().any(|a| a.status == 200 || a.status == 429));
    // Back means the store answers again: no "store unavailable" 503 (Retry-After: 5).
    // Thirty processes on one key may still see the seed's lock-timeout answer
    // (Retry-After: 1) on a loaded machine; that is contention, which the benchmark
    // measures, not an unreachable store.
    let unavailable: Vec<&Answer> = after
        .iter()
        .filter(|a| a.status == 503 && a.header("retry-after") != Some("1"))
        .collect();
    assert!(
        unavailable.is_empty(),
        "back after the restart: {:?}",
        unavailable.iter().map(|a| a.text()).collect::<Vec<_>>()
    );
    for a in after.iter().filter(|a| a.status == 503) {
        assert!(a.text().contains("Lock-Timeout"), "{}", a.text());
    }
}

#[test]
fn check_reports_whether_the_store_answers() {
    let mut redis = Redis::start();
    let [a, _] = nodes(&redis, "");
    let report = |site: &Site| {
        let out = site.cli("captcha", &["--check"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, up) = report(&a);
    assert_eq!(code, Some(0), "{up}");
    let line = up
        .lines()
        .find(|l| l.contains(" store "))
        .expect("store line");
    assert!(
        line.starts_with("ok") && line.contains("answered PONG"),
        "{line}"
    );
    redis.kill();
    let (code, down) = report(&a);
    assert_eq!(code, Some(1), "{down}");
    let line = down
        .lines()
        .find(|l| l.contains(" store "))
        .expect("store line");
    assert!(line.contains("cannot connect"), "{line}");
    redis_url_is_checked(&a.var("config/config.toml"));
}

/// A URL that is not one gets a config error naming the key (on every request and in
/// `--check`), never a panic.
fn redis_url_is_checked(config: &Path) {
    let text = std::fs::read_to_string(config).expect("config");
    assert!(text.contains("url = \"redis://"), "{text}");
    let bad = text.replacen("url = \"redis://", "url = \"http://", 1);
    std::fs::write(config, bad).expect("write");
    let site_root = config
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent);
    let out = Command::new(exe("captcha"))
        .arg("--check")
        .env_clear()
        .env("FORMWARDEN_ROOT", site_root.expect("root"))
        .output()
        .expect("check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("store.url"), "{report}");
}

/// Messages a node saved: in its spool or already in its mail-out folder.
fn saved(site: &Site) -> usize {
    site.ls("spool/new")
        .into_iter()
        .chain(site.ls("mail-out"))
        .filter(|f| f.ends_with(".toml") || f.ends_with(".eml"))
        .count()
}

/// An nginx in front of two nodes, as a load balancer: round robin over `upstreams`, each
/// answer naming the node it came from (`X-Upstream`).
struct Balancer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(upstreams: &[u16]) -> Balancer {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p};\n"))
            .collect();
        let user = if procs::effective_uid() == 0 {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
             \x20   upstream nodes {{\n{servers}    }}\n\
             \x20   server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
             \x20           proxy_pass http://nodes;\n            add_header X-Upstream $upstream_addr always;\n\
             \x20       }}\n    }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let child = Command::new(crate::util::servers::nginx_binary())
            .arg("-p")
            .arg(format!("{d}/"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "balancer did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        Balancer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, which takes its worker along.
        procs::signal(self.child.id() as i32, libc::SIGTERM);
        let _ = self.child.wait();
    }
}

#[test]
fn two_nginx_fastcgi_nodes_behind_one_balancer_serve_one_site() {
    use crate::util::http::Client;
    use crate::util::servers::{Kind, Server, share_var};
    let redis = Redis::start();
    let [a, b] = nodes(&redis, "");
    share_var(&a);
    share_var(&b);
    let node_a = Server::start(Kind::NginxFastcgi, &a);
    let node_b = Server::start(Kind::NginxFastcgi, &b);
    let front = Balancer::start(&[node_a.port(), node_b.port()]);
    let logs = || format!("node A:\n{}\nnode B:\n{}", node_a.log(), node_b.log());
    let mut served_by = std::collections::BTreeMap::<String, usize>::new();
    let rounds = 6;
    for round in 0..rounds {
        let mut browser = Client::new(front.port);
        let image = browser.get(&node_a.path("captcha"));
        assert_eq!(image.status, 200, "{}\n{}", image.describe(), logs());
        let answer = image
            .header("x-formwarden-test-answer")
            .expect("test hook header")
            .to_string();
        let image_node = image.header("x-upstream").expect("upstream").to_string();
        let sent = browser.post_form(&node_a.path("contact"), &good_form(&answer));
        assert!(
            sent.status == 200 || sent.status == 202,
            "round {round}: {}\n{}",
            sent.describe(),
            logs()
        );
        let post_node = sent.header("x-upstream").expect("upstream").to_string();
        // Round robin: the picture came from one node and the post went to the other.
        assert_ne!(image_node, post_node, "round {round}");
        *served_by.entry(post_node).or_default() += 1;
        let replay = browser.post_form(&node_a.path("contact"), &good_form(&answer));
        assert_eq!(replay.status, 403, "replay: {}", replay.describe());
    }
    assert_eq!(
        served_by.len(),
        2,
        "both nodes accepted posts: {served_by:?}"
    );
    // Each node keeps the messages it accepted on its own disk, none lost, none twice.
    let a_port = format!("127.0.0.1:{}", node_a.port());
    let b_port = format!("127.0.0.1:{}", node_b.port());
    assert_eq!(
        (saved(&a), saved(&b)),
        (served_by[&a_port], served_by[&b_port]),
        "{}",
        logs()
    );
    assert_eq!(saved(&a) + saved(&b), rounds);
}

#[test]
fn invalid_values_in_redis_are_reset_with_a_logged_reason_and_token_lists_fail_closed() {
    let redis = Redis::start();
    let [a, b] = nodes(&redis, "");
    let set = |key: &LockKey, value: &str| {
        let _: () = redis::cmd("SET")
            .arg(format!("{PREFIX}{}", key.as_str()))
            .arg(value)
            .query(&mut redis.conn())
            .expect("SET");
    };
    let addr = "198.51.100.66";
    let window = LockKey::ratelimit(&client_key(addr));
    for garbage in [
        "not toml at all",
        "window_start = \"yesterday\"\ncaptcha_get = 1\ncontact_post = 0\n",
        "window_start = 99999999999\ncaptcha_get = 1\ncontact_post = 0\n",
    ] {
        set(&window, garbage);
        let got = a.cgi("captcha", "GET").remote_addr(addr).run();
        assert_eq!(got.status, 200, "{}", got.text());
        assert!(
            got.stderr.contains("state reset") && got.stderr.contains("ratelimit_"),
            "the reset is logged with its reason: {}",
            got.stderr
        );
        let stored = redis.value(&window).expect("fresh window");
        assert_eq!(stored["captcha_get"].as_integer(), Some(1), "{garbage}");
    }

    let token = b.rotate("deploy");
    let tokens = LockKey::token("deploy");
    set(&tokens, "rotations = -1\n");
    let verify = a
        .cgi("tokens", "GET")
        .query("profile=deploy")
        .header("authorization", &format!("Bearer {token}"))
        .run();
    assert_eq!(verify.status, 401, "an unreadable list fails closed");
    assert!(
        verify.stderr.contains("token list invalid"),
        "{}",
        verify.stderr
    );
    // The next rotation starts a fresh list, and its token verifies on both nodes.
    let fresh = a.rotate("deploy");
    for node in [&a, &b] {
        let v = node
            .cgi("tokens", "GET")
            .query("profile=deploy")
            .header("authorization", &format!("Bearer {fresh}"))
            .run();
        assert_eq!(v.status, 204, "{}", v.text());
    }
    assert_eq!(
        redis.value(&tokens).expect("list")["rotations"].as_integer(),
        Some(1)
    );
}

#[test]
fn the_store_is_reached_over_a_unix_socket_and_over_tls_with_a_private_ca() {
    let (redis, ca) = Redis::start_tls();
    let Some((tls_port, _)) = redis.tls.clone() else {
        panic!("a TLS server")
    };
    let over_socket = node_at(&format!("unix://{}", redis.socket().display()), "");
    let over_tls = node_at(
        &format!("rediss://127.0.0.1:{tls_port}/0"),
        &format!("ca_file = \"{}\"\n", ca.display()),
    );
    let addr = "198.51.100.90";
    for node in [&over_socket, &over_tls] {
        let got = node.cgi("captcha", "GET").remote_addr(addr).run();
        assert_eq!(got.status, 200, "{}\n{}", got.text(), got.stderr);
    }
    // Both reached the same server: one window, two admissions.
    let stored = redis
        .value(&LockKey::ratelimit(&client_key(addr)))
        .expect("window");
    assert_eq!(stored["captcha_get"].as_integer(), Some(2));

    // Without the CA, the server's certificate is not trusted: a controlled 503, and the
    // log says why.
    let untrusted = node_at(&format!("rediss://127.0.0.1:{tls_port}/0"), "");
    let refused = untrusted.cgi("captcha", "GET").remote_addr(addr).run();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.stderr.contains("shared store rediss://127.0.0.1:")
            && refused.stderr.to_lowercase().contains("certificate"),
        "{}",
        refused.stderr
    );
    // And TLS settings on a plain URL are a config error naming the key.
    let wrong = node_at(&redis.url(), &format!("ca_file = \"{}\"\n", ca.display()));
    let out = wrong.cli("captcha", &["--check"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("store.ca_file"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_key_that_other_writers_never_leave_alone_gives_the_lock_timeout_answer() {
    let redis = Redis::start();
    let [a, _] = nodes(&redis, "");
    let addr = "198.51.100.123";
    let key = LockKey::ratelimit(&client_key(addr));
    let first = a.cgi("captcha", "GET").remote_addr(addr).run();
    assert_eq!(first.status, 200, "{}", first.text());
    // Every round, another writer touches the key between the read and the EXEC (the
    // test build's race hook), as a storm of other nodes would.
    let raced = a
        .cgi("captcha", "GET")
        .remote_addr(addr)
        .var("FORMWARDEN_TEST_STORE_RACE", "1")
        .run();
    let message = assert_lock_timeout(&raced, &key);
    assert!(raced.stderr.contains(&message), "{}", raced.stderr);
    // Nothing was counted for it, and the same key admits at once when left alone.
    let stored = redis.value(&key).expect("window");
    assert_eq!(stored["captcha_get"].as_integer(), Some(1));
    let later = a.cgi("captcha", "GET").remote_addr(addr).run();
    assert_eq!(later.status, 200, "{}", later.text());
    assert_eq!(
        redis.value(&key).expect("window")["captcha_get"].as_integer(),
        Some(2)
    );
}
