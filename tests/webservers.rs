//! The executables behind real web servers on loopback, configured with the files in
//! deploy/ (only their placeholders templated): Apache with the virtual host, Apache as a
//! shared host with the .htaccess files, nginx with fcgiwrap (CGI) and nginx with one
//! FastCGI responder per executable under spawn-fcgi. Each check runs against every one of
//! them, because each config can break a different part: the handler mapping, the
//! `Authorization` header, the runtime root, the deny rules, the status codes.

use crate::util::http::{Client, request, try_request};
use crate::util::servers::{Kind, Server, copy_tree, share_var};
use crate::util::*;
use std::path::Path;
use std::time::Instant;

/// One `#[test]` per server kind for a check `fn check(kind: Kind)`, in a module named
/// after the check, so that `webservers::full_flow` runs it everywhere.
macro_rules! on_servers {
    ($check:ident: $($name:ident => $kind:ident),+ $(,)?) => {
        mod $check {
            use crate::util::servers::Kind;
            $(
                #[test]
                fn $name() {
                    super::$check(Kind::$kind);
                }
            )+
        }
    };
}

/// Messages that reached the spool or the mail-out folder (temp and marker files aside).
fn delivered(site: &Site) -> usize {
    site.ls("spool/new")
        .into_iter()
        .chain(site.ls("mail-out"))
        .filter(|f| !f.starts_with('.'))
        .count()
}

/// Fetches a CAPTCHA through the server; returns the answer from the test-only header.
fn fetch_captcha(server: &Server, browser: &mut Client) -> String {
    let image = browser.get(&server.path("captcha"));
    assert_eq!(
        image.status,
        200,
        "captcha: {}\n{}",
        image.describe(),
        server.log()
    );
    assert_eq!(image.header("content-type"), Some("image/png"));
    assert_eq!(image.header("cache-control"), Some("no-store"));
    assert!(image.body.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG image");
    assert!(
        browser.cookie("fw_captcha").is_some(),
        "the challenge cookie: {}",
        image.describe()
    );
    image
        .header("x-formwarden-test-answer")
        .expect("the test-hook header (test builds only)")
        .to_string()
}

// ---------------------------------------------------------------------------------------

on_servers!(full_flow:
    apache_vhost => ApacheVhost,
    apache_htaccess => ApacheHtaccess,
    apache_htaccess_var_in_web_root => ApacheHtaccessVarInWebRoot,
    nginx_cgi => NginxCgi,
    nginx_fastcgi => NginxFastcgi,
);

/// A visitor's whole path: the static page, the form page the executable renders, the
/// image with its cookie, the POST; exactly one message arrives.
fn full_flow(kind: Kind) {
    let site = Site::new();
    let server = Server::start(kind, &site);
    let mut browser = server.client();

    let page = browser.get("/");
    assert_eq!(page.status, 200, "static page: {}", page.describe());
    assert!(page.text().contains("<form"), "the static contact page");
    let css = browser.get("/style.css");
    assert_eq!(css.status, 200, "static file: {}", css.describe());
    assert!(
        css.header("content-type")
            .is_some_and(|t| t.starts_with("text/css")),
        "static files keep their type: {}",
        css.describe()
    );

    // The page the executable renders links its siblings by the URL it was called under,
    // so the .cgi names of shared hosting need no change anywhere.
    let form = browser.get(&server.path("contact"));
    assert_eq!(
        form.status,
        200,
        "form page: {}\n{}",
        form.describe(),
        server.log()
    );
    assert!(
        form.text()
            .contains(&format!("\"{}\"", server.path("captcha"))),
        "the form shows the sibling image URL {}: {}",
        server.path("captcha"),
        form.text()
    );

    let answer = fetch_captcha(&server, &mut browser);
    assert_eq!(delivered(&site), 0);
    let sent = browser.post_form(&server.path("contact"), &good_form(&answer));
    assert!(
        sent.status == 200 || sent.status == 202,
        "POST: {}\n{}",
        sent.describe(),
        server.log()
    );
    assert!(
        sent.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "a form gets a page: {}",
        sent.describe()
    );
    assert_eq!(
        delivered(&site),
        1,
        "exactly one message in spool/new or mail-out; spool {:?}, mail-out {:?}",
        site.ls("spool/new"),
        site.ls("mail-out")
    );
}

// ---------------------------------------------------------------------------------------

on_servers!(rate_limit:
    apache_vhost => ApacheVhost,
    apache_htaccess => ApacheHtaccess,
    nginx_cgi => NginxCgi,
    nginx_fastcgi => NginxFastcgi,
);

/// The limiter's 429 and its `Retry-After` pass through the server unchanged.
fn rate_limit(kind: Kind) {
    let site = Site::with("captcha_max_get = 3", "");
    let server = Server::start(kind, &site);
    let mut browser = server.client();
    for i in 1..=3 {
        let a = browser.get(&server.path("captcha"));
        assert_eq!(
            a.status,
            200,
            "GET {i} is within the limit: {}\n{}",
            a.describe(),
            server.log()
        );
    }
    let refused = browser.get(&server.path("captcha"));
    assert_eq!(refused.status, 429, "the 4th GET: {}", refused.describe());
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
}

// ---------------------------------------------------------------------------------------

on_servers!(var_is_never_served:
    apache_vhost => ApacheVhost,
    apache_htaccess_var_in_web_root => ApacheHtaccessVarInWebRoot,
    nginx_cgi => NginxCgi,
    nginx_fastcgi => NginxFastcgi,
);

/// Paths that lead into var/ (the copy or the live tree) written every way a client can
/// write them: plain, traversing, percent-encoded, doubled slashes, dot segments.
const VAR_PATHS: &[&str] = &[
    "/var/config/config.toml",
    "/var/config/",
    "/var/",
    "/var",
    "/var/config/config.toml?x=1",
    "/var/config/config.toml/.",
    "/var/config/./config.toml",
    "/var/config/../config/config.toml",
    "/var%2fconfig%2fconfig.toml",
    "/var/config%2fconfig.toml",
    "/%76ar/config/config.toml",
    "/%76%61%72/config/config.toml",
    "//var/config/config.toml",
    "/./var/config/config.toml",
    "/../var/config/config.toml",
    "/%2e%2e/var/config/config.toml",
    "/%2E%2E/var/config/config.toml",
    "/.%2e/var/config/config.toml",
    "/%2e./var/config/config.toml",
    "/..%2fvar/config/config.toml",
    "/%2e%2e%2fvar%2fconfig%2fconfig.toml",
    "/cgi-bin/../var/config/config.toml",
    "/cgi-bin/../../var/config/config.toml",
    "/cgi-bin/%2e%2e/var/config/config.toml",
    "/cgi-bin/%2e%2e/%2e%2e/var/config/config.toml",
    "/cgi-bin/..%2fvar/config/config.toml",
    "/cgi-bin/..%2f..%2fvar/config/config.toml",
    "/cgi-bin/contact/../../var/config/config.toml",
    "/cgi-bin/contact.cgi/../../var/config/config.toml",
    "/var/config/config.toml%00",
    "/var/config/config.toml%00.html",
    "/var/.htaccess",
];

/// var/ holds the salt; no request may ever see it. A copy of var/ is put into the web
/// root (unless var/ lives there already), so a refusal proves the deny rules and not
/// only that nothing is there.
fn var_is_never_served(kind: Kind) {
    let site = Site::new();
    let server = Server::start(kind, &site);
    let docroot = server.docroot().to_path_buf();
    if kind != Kind::ApacheHtaccessVarInWebRoot {
        copy_tree(&site.var(""), &docroot.join("var"));
    }
    let config = std::fs::read_to_string(docroot.join("var/config/config.toml"))
        .expect("var/ is inside the web root");
    assert!(
        config.contains(SALT),
        "the config in the web root holds the salt"
    );

    // Secrets in dot-files and stray files: the deny rules cover them too.
    let mut paths: Vec<String> = VAR_PATHS.iter().map(|p| p.to_string()).collect();
    let secret = format!("ip_salt = \"{SALT}\"\n");
    let mut plant = |rel: &str| {
        let file = docroot.join(rel);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, &secret).expect("plant a secret");
        paths.push(format!("/{rel}"));
    };
    match kind {
        Kind::ApacheHtaccess | Kind::ApacheHtaccessVarInWebRoot => {
            // The .htaccess of the executables' folder serves programs only.
            plant("cgi-bin/notes.txt");
            plant("cgi-bin/contact.cgi~");
            plant("cgi-bin/.secret.cgi");
            plant("cgi-bin/.htaccess.bak");
            paths.push("/cgi-bin/.htaccess".into());
            paths.push("/cgi-bin/".into());
        }
        _ => {
            plant(".env");
            plant(".git/config");
            plant("sub/.secret");
            // A release unpacked into the web root: its operator programs and the FTP
            // deploy's release copies (Apache's case is tests/ftp_deploy.rs).
            plant("bin/spool");
            plant("formwarden-releases/CURRENT");
            paths.push("/%2eenv".into());
            paths.push("/.git/".into());
            paths.push("/cgi-bin/".into());
            paths.push("/cgi-bin/.env".into());
        }
    }
    share_var(&site);

    for path in &paths {
        for method in ["GET", "HEAD", "POST"] {
            let a = request(server.port(), method, path, &[], b"");
            assert!(
                !(200..300).contains(&a.status),
                "{method} {path} must be refused: {}",
                a.describe()
            );
            assert!(
                !a.text().contains(SALT),
                "{method} {path} leaked the salt: {}",
                a.describe()
            );
        }
    }

    // Controls: the static site and /.well-known/ (certificate challenges) stay served,
    // so the refusals above come from the rules, not from a broken server.
    std::fs::create_dir_all(docroot.join(".well-known/acme-challenge")).expect("mkdir");
    std::fs::write(docroot.join(".well-known/acme-challenge/probe"), "probe").expect("write");
    // A file whose name merely starts with "var" is no part of var/.
    std::fs::write(docroot.join("variables.txt"), "not var").expect("write");
    for path in [
        "/",
        "/style.css",
        "/variables.txt",
        "/.well-known/acme-challenge/probe",
    ] {
        let a = request(server.port(), "GET", path, &[], b"");
        assert_eq!(a.status, 200, "GET {path}: {}", a.describe());
    }
}

// ---------------------------------------------------------------------------------------

on_servers!(lock_timeout_is_503:
    apache_vhost => ApacheVhost,
    apache_htaccess => ApacheHtaccess,
    nginx_cgi => NginxCgi,
    nginx_fastcgi => NginxFastcgi,
);

/// A held rate-limit lock makes the CAPTCHA GET wait its bound and answer 503 with
/// `Retry-After`; the server passes that through instead of turning it into a 502/504.
fn lock_timeout_is_503(kind: Kind) {
    let site = Site::new();
    let server = Server::start(kind, &site);
    let key = formwarden::lock::LockKey::ratelimit(&client_key("127.0.0.1"));
    let held = site.hold_lock(&key);
    // The test created the lock file as root; the server's account must open it too.
    share_var(&site);
    let t = Instant::now();
    let a = request(server.port(), "GET", &server.path("captcha"), &[], b"");
    let took = t.elapsed();
    assert_eq!(a.status, 503, "{}\n{}", a.describe(), server.log());
    assert_lock_timeout_reply(a.status, a.header("retry-after"), &a.text(), took, &key);
    drop(held);
    let a = request(server.port(), "GET", &server.path("captcha"), &[], b"");
    assert_eq!(a.status, 200, "after release: {}", a.describe());
}

// ---------------------------------------------------------------------------------------

on_servers!(tokens_get_the_authorization_header:
    apache_vhost => ApacheVhost,
    apache_htaccess => ApacheHtaccess,
    nginx_cgi => NginxCgi,
    nginx_fastcgi => NginxFastcgi,
);

/// `Authorization: Bearer` reaches the tokens endpoint (Apache drops it for CGI unless
/// the config says `CGIPassAuth On`): 204 for a valid token, 401 otherwise.
fn tokens_get_the_authorization_header(kind: Kind) {
    let site = Site::new();
    let out = site.tokens_cli(&["rotate", "deploy"]);
    assert!(
        out.status.success(),
        "rotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.lines().next().expect("the token on line 1").trim();
    // Before the server starts, which hands var/ to its account: a token list this
    // command wrote later would be root's alone (0600), as OPERATIONS warns.
    let admin = format!("Bearer {}", site.rotate("admin"));
    let server = Server::start(kind, &site);
    let target = format!("{}?profile=deploy", server.path("tokens"));
    let bearer = format!("Bearer {token}");

    let ok = request(
        server.port(),
        "GET",
        &target,
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(ok.status, 204, "{}\n{}", ok.describe(), server.log());

    let wrong = format!("Bearer {}x", &token[..token.len() - 1]);
    for headers in [vec![("Authorization", wrong.as_str())], vec![]] {
        let a = request(server.port(), "GET", &target, &headers, b"");
        assert_eq!(a.status, 401, "{headers:?}: {}", a.describe());
    }

    // The admin's spool commands (the way without a shell) arrive whole through the server:
    // the header, the query's several parameters, and a POST without a body.
    let list = format!(
        "{}?action=spool&do=list&folder=failed",
        server.path("tokens")
    );
    let a = request(
        server.port(),
        "GET",
        &list,
        &[("Authorization", &admin)],
        b"",
    );
    assert_eq!(a.status, 200, "{}\n{}", a.describe(), server.log());
    assert!(a.text().starts_with("id\tattempts"), "{}", a.describe());
    let requeue = format!("{}?action=spool&do=requeue&id=all", server.path("tokens"));
    let a = request(
        server.port(),
        "POST",
        &requeue,
        &[("Authorization", &admin)],
        b"",
    );
    assert_eq!(a.status, 200, "{}\n{}", a.describe(), server.log());
    assert!(a.text().contains("requeued 0"), "{}", a.describe());
    let a = request(
        server.port(),
        "POST",
        &requeue,
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(a.status, 401, "a deploy token: {}", a.describe());
}

// ---------------------------------------------------------------------------------------

on_servers!(refused_bodies:
    apache_vhost => ApacheVhost,
    apache_htaccess => ApacheHtaccess,
    nginx_cgi => NginxCgi,
    nginx_fastcgi => NginxFastcgi,
);

/// Bodies the executable refuses without reading them still get their whole answer
/// through the server (the page, then a clean end of the response). And the server's own
/// body limit sits a little above the app's 32 KiB: a form slightly over 32 KiB reaches
/// the executable, which answers with its own 413 page; only a far larger body is cut off
/// by the server itself (not on shared hosting, whose .htaccess sets no limit).
fn refused_bodies(kind: Kind) {
    let site = Site::new();
    let server = Server::start(kind, &site);
    let post = |content_type: &str, body: &str| {
        try_request(
            server.port(),
            "POST",
            &server.path("contact"),
            &[("Content-Type", content_type)],
            body.as_bytes(),
        )
        .unwrap_or_else(|why| {
            panic!(
                "the answer to a refused body must arrive whole: {why}\n\
                 (under Apache's mod_cgid, a CGI process that exits without reading its \
                 body makes Apache read ECONNRESET, AH00574, and cut the answer short)\n{}",
                server.log()
            )
        })
    };
    let form = |size: usize| format!("name=x&message={}", "a".repeat(size));

    let a = post("text/plain", &"a".repeat(4096));
    assert_eq!(a.status, 415, "{}\n{}", a.describe(), server.log());

    let a = post("application/x-www-form-urlencoded", &form(36 * 1024));
    assert_eq!(a.status, 413, "{}\n{}", a.describe(), server.log());
    assert_eq!(
        a.header("cache-control"),
        Some("no-store"),
        "the executable's own answer: {}",
        a.describe()
    );

    if kind != Kind::ApacheHtaccess {
        let a = post("application/x-www-form-urlencoded", &form(64 * 1024));
        assert_eq!(a.status, 413, "{}", a.describe());
        assert_ne!(
            a.header("cache-control"),
            Some("no-store"),
            "the server's answer, the executable never started: {}",
            a.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------

on_servers!(stopping_leaves_no_process:
    apache_vhost => ApacheVhost,
    nginx_cgi => NginxCgi,
    nginx_fastcgi => NginxFastcgi,
);

/// Dropping a server ends every process it started (workers, CGI daemons, fcgiwrap's
/// children, responders): nothing outlives its test.
fn stopping_leaves_no_process(kind: Kind) {
    let site = Site::new();
    let server = Server::start(kind, &site);
    let a = request(server.port(), "GET", &server.path("captcha"), &[], b"");
    assert_eq!(a.status, 200, "{}\n{}", a.describe(), server.log());
    let pids = server.pids();
    assert!(pids.len() > 1, "a server and its helpers: {pids:?}");
    let port = server.port();
    drop(server);
    let alive: Vec<u32> = pids
        .into_iter()
        .filter(|&pid| procs::running(pid))
        .filter(|&pid| {
            // A pid may be reused at once by an unrelated process; only ours count.
            procs::cmdline(pid).is_some_and(|c| {
                [
                    "apache2", "nginx", "fcgiwrap", "captcha", "contact", "tokens",
                ]
                .iter()
                .any(|n| c.contains(n))
            })
        })
        .collect();
    assert!(alive.is_empty(), "still running after the drop: {alive:?}");
    assert!(!net::accepts(port), "nothing listens on the port any more");
}

// ---------------------------------------------------------------------------------------

/// A bounded load through nginx, CGI (fcgiwrap) and FastCGI, 400 requests of
/// `GET /cgi-bin/captcha` at 8 concurrent connections with `ab`: every request must get an
/// answer (no connection errors). Requests per second are printed, never asserted; the
/// benchmark figures come from `scripts/bench.sh` and longer runs of this test.
#[test]
fn throughput_nginx_cgi_vs_fastcgi() {
    for kind in [Kind::NginxCgi, Kind::NginxFastcgi] {
        let site = Site::with("captcha_max_get = 1000000", "");
        let server = Server::start(kind, &site);
        let url = format!(
            "http://127.0.0.1:{}{}",
            server.port(),
            server.path("captcha")
        );
        let out = std::process::Command::new("ab")
            // -l: every PNG has its own length, which is not a failure.
            .args(["-q", "-l", "-n", "400", "-c", "8", &url])
            .output()
            .expect("run ab (apache2-utils)");
        let report = String::from_utf8_lossy(&out.stdout);
        // ab prints "Non-2xx responses" only when there were some.
        let line = |key: &str, absent: &str| {
            report
                .lines()
                .find(|l| l.starts_with(key))
                .map_or_else(|| format!("{key}: {absent}"), |l| l.trim().to_string())
        };
        println!(
            "{kind:?}: {} | {} | {} | {}",
            line("Requests per second", "?"),
            line("Failed requests", "?"),
            line("Non-2xx responses", "0"),
            line("Time per request", "?")
        );
        assert!(out.status.success(), "ab: {report}\n{}", server.log());
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("Failed requests:") && l.trim().ends_with(" 0")),
            "every request gets an answer: {report}"
        );
    }
}

/// The deploy files keep their promises about themselves: every placeholder a file uses
/// is listed in its header, and Apache files have no comment at the end of a line.
#[test]
fn deploy_files_document_their_placeholders() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for rel in [
        "apache/.htaccess",
        "apache/var.htaccess",
        "apache/vhost.conf",
        "nginx/cgi.conf",
        "nginx/fastcgi.conf",
    ] {
        let text = std::fs::read_to_string(deploy.join(rel))
            .unwrap_or_else(|e| panic!("read deploy/{rel}: {e}"));
        let (header, body): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.trim_start().starts_with('#'));
        let header = header.join("\n");
        for line in &body {
            for word in line.split('@').skip(1).step_by(2) {
                if !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    assert!(
                        header.contains(&format!("@{word}@")),
                        "deploy/{rel} uses @{word}@ without explaining it"
                    );
                }
            }
            if rel.starts_with("apache/") {
                assert!(
                    !line.contains(" #"),
                    "deploy/{rel}: Apache rejects a comment at the end of a line: {line}"
                );
            }
        }
    }
}
