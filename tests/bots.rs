//! Issue 8, item 8: the bot suite. Senders of every kind the spam layers are meant for, and
//! the real visitors they must let through, drive the real executables behind the suite's
//! nginx (deploy/nginx/cgi.conf with fcgiwrap), with the default spam settings (time trap
//! of 3 s, content rules on). Each message carries its own marker, so its fate is read
//! from the runtime tree: delivered (in the mail-out folder, or queued in `spool/new`),
//! quarantined (`spool/quarantine`), or refused (neither, and a 4xx answer).
//!
//! The classes: (a) a naive filler that fills every input and posts at once; (b) a fast
//! sender with correct fields and a solved CAPTCHA (through the test-build hook) in under a
//! second; (c) a replayer of a message that went through; (d) an OCR bot with tesseract;
//! (e) headless Chromium with tesseract (tests/browser/flow.mjs `ocrbot`); (f) a link
//! spammer with a solved CAPTCHA, as a solving farm would send; (g) real visitors whose
//! password manager fills the form, who take ten seconds; (h) real visitors on the audio
//! path and on the proof-of-work path (a site with `spam.challenge = "pow-or-image"`).
//!
//! The test asserts every message's fate: (a)(b)(c) refused; (d)(e) delivered exactly when
//! tesseract read the picture right, else refused; (f) quarantined; (g)(h) delivered. The
//! rates are benchmark figures: the test prints the table, and `scripts/bots.sh` runs it
//! with more attempts (FW_BOTS_SCALE) for docs/SPAM.md. Rate limits are set high here: the
//! suite measures the spam layers, not the limiter (tests/floods.rs does that).

use crate::browser::Report;
use crate::util::http::{Client, Reply};
use crate::util::servers::{Nginx, Server};
use crate::util::{self, Site};
use formwarden::captcha::ALPHABET_TEXT as ALPHABET;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// A little over the default `spam.min_fill_seconds`: what a patient bot waits.
const PATIENT: Duration = Duration::from_millis(3300);

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageOutcome {
    Delivered,
    Quarantined,
    Refused,
}

/// One attempt: its marker, the HTTP status, and what it must come to.
struct Attempt {
    marker: String,
    status: u16,
    expect: MessageOutcome,
    note: String,
}

fn scale() -> usize {
    std::env::var("FW_BOTS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn marker(class: &str, i: usize) -> String {
    format!("fwbot-{class}-{i}-{}", std::process::id())
}

/// Every `<input>` of a page: its attributes by name.
fn inputs(html: &str) -> Vec<BTreeMap<String, String>> {
    html.split("<input")
        .skip(1)
        .filter_map(|rest| rest.split('>').next())
        .map(|tag| {
            let mut attrs = BTreeMap::new();
            for part in tag.split('"').collect::<Vec<_>>().chunks(2) {
                if let [key, value] = part {
                    let key = key.trim().trim_end_matches('=').trim();
                    // Attributes without a value (required, disabled) come before the key.
                    if let Some(key) = key.split_whitespace().last() {
                        attrs.insert(key.to_ascii_lowercase(), value.to_string());
                    }
                }
            }
            attrs
        })
        .collect()
}

fn message(marker: &str) -> String {
    format!("Hello, I have a question about your opening hours.\nRef {marker}")
}

fn fetch_captcha(c: &mut Client) -> (Reply, String) {
    let r = c.get("/cgi-bin/captcha");
    assert_eq!(r.status, 200, "captcha: {}", r.describe());
    let answer = r
        .header("x-formwarden-test-answer")
        .expect("hook")
        .to_string();
    (r, answer)
}

fn post(c: &mut Client, fields: &[(&str, String)]) -> Reply {
    c.post_form("/cgi-bin/contact?lang=en", fields)
}

fn honest_fields(marker: &str, captcha: &str) -> Vec<(&'static str, String)> {
    vec![
        ("name", "Margaret Hamilton".into()),
        ("email", "margaret@example.net".into()),
        ("subject", "Opening hours".into()),
        ("message", message(marker)),
        ("captcha", captcha.into()),
    ]
}

/// tesseract as a cheap bot runs it: one line (psm 7), then one word (psm 8), whitelisted
/// to the alphabet; the first guess of a plausible length wins. (scripts/ocr.py is the
/// thorough measure; this is what a bot does per attempt.)
fn ocr(png: &[u8], dir: &Path, i: usize) -> String {
    let path = dir.join(format!("ocr-{i}.png"));
    std::fs::write(&path, png).expect("write png");
    for psm in ["7", "8"] {
        let out = Command::new("tesseract")
            .arg(&path)
            .args(["stdout", "--psm", psm, "-c"])
            .arg(format!("tessedit_char_whitelist={ALPHABET}"))
            .output()
            .unwrap_or_else(|e| panic!("tesseract (run scripts/install-test-deps.sh): {e}"));
        let guess: String = String::from_utf8_lossy(&out.stdout)
            .chars()
            .filter(|c| ALPHABET.contains(*c))
            .collect();
        if (4..=8).contains(&guess.len()) {
            return guess;
        }
    }
    String::new()
}

/// Runs `n` attempts of one class side by side (each waits on its own clock), at most
/// `PARALLEL` at a time: a few hundred CGI processes started at once through fcgiwrap
/// (bots.sh 30) only measure the machine's overload, not the layers.
fn parallel(n: usize, f: impl Fn(usize) -> Attempt + Sync) -> Vec<Attempt> {
    const PARALLEL: usize = 24;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, Attempt)> = thread::scope(|s| {
        let workers: Vec<_> = (0..n.min(PARALLEL))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return mine;
                        }
                        mine.push((i, f(i)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("attempt thread"))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, a)| a).collect()
}

/// The fate of every attempt from the runtime tree.
fn fates(site: &Site, attempts: &[Attempt]) -> Vec<MessageOutcome> {
    let read = |rel: &str| -> String {
        util::walk(&site.var(rel))
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned())
            .collect()
    };
    let delivered = read("mail-out") + &read("spool/new") + &read("spool/cur");
    let quarantined = read("spool/quarantine");
    attempts
        .iter()
        .map(|a| {
            let fate = if delivered.contains(&a.marker) {
                MessageOutcome::Delivered
            } else if quarantined.contains(&a.marker) {
                MessageOutcome::Quarantined
            } else {
                MessageOutcome::Refused
            };
            if fate == MessageOutcome::Refused {
                assert!(
                    (400..500).contains(&a.status),
                    "{}: answered {} but the message is nowhere: a lost message",
                    a.marker,
                    a.status
                );
            }
            fate
        })
        .collect()
}

struct Row {
    class: &'static str,
    attempts: usize,
    delivered: usize,
    quarantined: usize,
    refused: usize,
}

fn tally(class: &'static str, site: &Site, attempts: &[Attempt]) -> Row {
    let got = fates(site, attempts);
    for (a, f) in attempts.iter().zip(&got) {
        assert_eq!(
            *f, a.expect,
            "{class}: {} ({}): HTTP {}",
            a.marker, a.note, a.status
        );
    }
    let count = |want| got.iter().filter(|&&f| f == want).count();
    Row {
        class,
        attempts: attempts.len(),
        delivered: count(MessageOutcome::Delivered),
        quarantined: count(MessageOutcome::Quarantined),
        refused: count(MessageOutcome::Refused),
    }
}

fn naive_filler(port: u16, i: usize) -> Attempt {
    let mut c = Client::new(port);
    let page = c.get("/index.html").text();
    let m = marker("a", i);
    fetch_captcha(&mut c);
    let mut fields: Vec<(&str, String)> = Vec::new();
    let names: Vec<String> = inputs(&page)
        .into_iter()
        .filter_map(|a| a.get("name").cloned())
        .collect();
    for name in &names {
        let value = match name.as_str() {
            "email" => "win@prize.example".to_string(),
            "captcha" => "ACDEF".to_string(),
            _ => "Cheap pills".to_string(),
        };
        fields.push((name.as_str(), value));
    }
    fields.push(("message", message(&m)));
    let r = post(&mut c, &fields);
    Attempt {
        marker: m,
        status: r.status,
        expect: MessageOutcome::Refused,
        note: format!("filled {names:?}"),
    }
}

fn fast_sender(port: u16, i: usize) -> Attempt {
    let mut c = Client::new(port);
    let m = marker("b", i);
    let start = Instant::now();
    let (_, answer) = fetch_captcha(&mut c);
    let r = post(&mut c, &honest_fields(&m, &answer));
    Attempt {
        marker: m,
        status: r.status,
        expect: MessageOutcome::Refused,
        note: format!("posted after {:?}", start.elapsed()),
    }
}

/// (c): one message goes through (not counted), then its request is sent again.
fn replays(port: u16, site: &Site, n: usize) -> Vec<Attempt> {
    let mut c = Client::new(port);
    let m = marker("c-original", 0);
    let (_, answer) = fetch_captcha(&mut c);
    thread::sleep(PATIENT);
    let fields = honest_fields(&m, &answer);
    let first = post(&mut c, &fields);
    assert_eq!(first.status, 200, "the original: {}", first.describe());
    assert_eq!(
        fates(
            site,
            &[Attempt {
                marker: m,
                status: 200,
                expect: MessageOutcome::Delivered,
                note: String::new()
            }]
        ),
        [MessageOutcome::Delivered]
    );
    (0..n)
        .map(|i| {
            // The same challenge and answer, but a new marker, so each replay's fate is
            // its own: a replayer changes the text, not the proof.
            let m = marker("c", i);
            let mut again = fields.clone();
            again.retain(|(k, _)| *k != "message");
            again.push(("message", message(&m)));
            let r = post(&mut c, &again);
            Attempt {
                marker: m,
                status: r.status,
                expect: MessageOutcome::Refused,
                note: "replayed challenge".into(),
            }
        })
        .collect()
}

fn ocr_bot(port: u16, dir: &Path, i: usize) -> Attempt {
    let mut c = Client::new(port);
    let m = marker("d", i);
    let start = Instant::now();
    let (img, answer) = fetch_captcha(&mut c);
    let guess = ocr(&img.body, dir, i);
    thread::sleep(PATIENT.saturating_sub(start.elapsed()));
    let r = post(&mut c, &honest_fields(&m, &guess));
    let read = guess.eq_ignore_ascii_case(&answer);
    Attempt {
        marker: m,
        status: r.status,
        expect: if read {
            MessageOutcome::Delivered
        } else {
            MessageOutcome::Refused
        },
        note: format!("read {guess:?} for {answer:?}"),
    }
}

fn link_spammer(port: u16, i: usize) -> Attempt {
    let mut c = Client::new(port);
    let m = marker("f", i);
    let (_, answer) = fetch_captcha(&mut c);
    thread::sleep(PATIENT);
    let mut fields = honest_fields(&m, &answer);
    fields.retain(|(k, _)| *k != "message");
    fields.push((
        "message",
        format!(
            "Best offers: https://a.example/1 https://b.example/2 https://c.example/3 http://d.example/4\n{m}"
        ),
    ));
    let r = post(&mut c, &fields);
    Attempt {
        marker: m,
        status: r.status,
        expect: MessageOutcome::Quarantined,
        note: "four links".into(),
    }
}

/// (g): a password manager fills what looks like a name or an e-mail field and leaves
/// alone what is marked to be ignored (as LastPass, 1Password and Bitwarden honour their
/// attributes); every second one is greedy and fills every text field that is not marked,
/// as managers that disregard `autocomplete="off"` do. The person takes ten seconds.
fn autofill_visitor(port: u16, i: usize) -> Attempt {
    let mut c = Client::new(port);
    let page = c.get("/index.html").text();
    let m = marker("g", i);
    let (_, answer) = fetch_captcha(&mut c);
    let greedy = i % 2 == 1;
    let mut owned: Vec<(String, String)> = Vec::new();
    for a in inputs(&page) {
        let Some(name) = a.get("name") else { continue };
        let ignored = ["data-lpignore", "data-1p-ignore", "data-bwignore"]
            .iter()
            .any(|k| a.get(*k).is_some_and(|v| v == "true"));
        let kind = a.get("type").map_or("text", String::as_str);
        let auto = a.get("autocomplete").map_or("", String::as_str);
        let value = match (name.as_str(), auto) {
            ("captcha", _) => Some(answer.clone()),
            (_, "name") => Some("Margaret Hamilton".to_string()),
            (_, "email") => Some("margaret@example.net".to_string()),
            ("subject", _) => Some("Opening hours".to_string()),
            _ if greedy && !ignored && kind == "text" => Some("Margaret Hamilton".to_string()),
            _ => None,
        };
        if let Some(v) = value {
            owned.push((name.clone(), v));
        }
    }
    owned.push(("message".into(), message(&m)));
    let filled: Vec<&str> = owned.iter().map(|(k, _)| k.as_str()).collect();
    let fields: Vec<(&str, String)> = owned.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    thread::sleep(Duration::from_secs(10));
    let r = post(&mut c, &fields);
    Attempt {
        marker: m,
        status: r.status,
        expect: MessageOutcome::Delivered,
        note: format!("greedy {greedy}, filled {filled:?}"),
    }
}

fn audio_visitor(port: u16, i: usize) -> Attempt {
    let mut c = Client::new(port);
    let m = marker("h-audio", i);
    fetch_captcha(&mut c);
    let heard = c.get("/cgi-bin/captcha?audio=1&lang=en");
    assert_eq!(heard.status, 200, "recording: {}", heard.describe());
    assert_eq!(heard.header("content-type"), Some("audio/wav"));
    let answer = heard
        .header("x-formwarden-test-answer")
        .expect("hook")
        .to_string();
    thread::sleep(PATIENT);
    let r = post(&mut c, &honest_fields(&m, &answer));
    Attempt {
        marker: m,
        status: r.status,
        expect: MessageOutcome::Delivered,
        note: "listened".into(),
    }
}

fn pow_visitor(port: u16, i: usize) -> Attempt {
    let mut c = Client::new(port);
    let m = marker("h-pow", i);
    let j = c.send(
        "GET",
        "/cgi-bin/captcha",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(j.status, 200, "{}", j.describe());
    let t = j.text();
    let id = util::json_field(&t, "id");
    let bits: u32 = util::json_field(&t, "pow/bits").parse().expect("pow bits");
    let nonce = util::solve_pow(&id, bits);
    thread::sleep(PATIENT);
    let mut fields = honest_fields(&m, "");
    fields.push(("captcha_id", id));
    fields.push(("pow", nonce));
    let r = post(&mut c, &fields);
    Attempt {
        marker: m,
        status: r.status,
        expect: MessageOutcome::Delivered,
        note: format!("{bits} bits"),
    }
}

/// (e): flow.mjs's `ocrbot` scenario: Chromium loads the page with its script, tesseract
/// reads a screenshot of the picture, the bot fills the visible fields, waits out the
/// time trap and sends.
fn browser_ocr_bots(server: &Server, n: usize) -> Vec<Attempt> {
    let base = format!("http://127.0.0.1:{}", server.port());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let m = marker("e", 0);
    let out = Command::new("node")
        .arg(dir.join("flow.mjs"))
        .args([
            "--base",
            &base,
            "--marker",
            &m,
            "--only",
            "ocrbot",
            "--alphabet",
            ALPHABET,
            "--runs",
        ])
        .arg(n.to_string())
        // Each visit waits out the time trap and runs tesseract: the script's own 150 s
        // watchdog would cut a large run (bots.sh 30) short.
        .env("FW_FLOW_TIMEOUT", (60 + 10 * n).to_string())
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("node (run scripts/install-test-deps.sh): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = Report::parse(&text);
    assert!(
        out.status.success() && report.as_ref().is_ok_and(|r| r.get("failures").is_empty()),
        "flow.mjs ocrbot failed:\n{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let report = report.expect("checked above");
    let value = |key: &str| report.get(key).to_string();
    (0..n)
        .map(|i| {
            let guess = value(&format!("ocrbot.{i}.guess"));
            let answer = value(&format!("ocrbot.{i}.answer"));
            Attempt {
                marker: format!("{m}-{i}x"),
                status: value(&format!("ocrbot.{i}.status")).parse().unwrap_or(0),
                expect: if guess.eq_ignore_ascii_case(&answer) && !guess.is_empty() {
                    MessageOutcome::Delivered
                } else {
                    MessageOutcome::Refused
                },
                note: format!("read {guess:?} for {answer:?}"),
            }
        })
        .collect()
}

#[test]
fn the_bot_suite_stops_bots_and_lets_every_visitor_through() {
    let k = scale();
    // The rate limits stay out of the way at any scale (bots.sh 30 asks for more than the
    // test sites' default of 1,000 images from one address): the suite measures the other
    // layers.
    let unlimited = "captcha_max_get = 1000000\ncontact_max_post = 1000000\n";
    let site = Site::with(unlimited, "[spam]\nmin_fill_seconds = 3\n");
    let server = Nginx::start_cgi(&site);
    let port = server.port();
    let work = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();

    let mut rows = Vec::new();
    let a = parallel(5 * k, |i| naive_filler(port, i));
    rows.push(tally("(a) naive filler", &site, &a));
    let b = parallel(5 * k, |i| fast_sender(port, i));
    rows.push(tally("(b) fast sender, solved CAPTCHA", &site, &b));
    let c = replays(port, &site, 5 * k);
    rows.push(tally("(c) replayer", &site, &c));
    let d = parallel(12 * k, |i| ocr_bot(port, work.path(), i));
    rows.push(tally("(d) OCR bot (tesseract)", &site, &d));
    let e = browser_ocr_bots(&server, 3 * k);
    rows.push(tally("(e) headless Chromium + OCR", &site, &e));
    let f = parallel(5 * k, |i| link_spammer(port, i));
    rows.push(tally("(f) link spammer, solved CAPTCHA", &site, &f));
    let g = parallel(4 * k, |i| autofill_visitor(port, i));
    rows.push(tally("(g) visitor with autofill, 10 s", &site, &g));
    let h = parallel(3 * k, |i| audio_visitor(port, i));
    rows.push(tally("(h) visitor on the audio path", &site, &h));
    drop(server);

    let pow_site = Site::with(
        unlimited,
        "[spam]\nmin_fill_seconds = 3\nchallenge = \"pow-or-image\"\n",
    );
    let pow_server = Nginx::start_cgi(&pow_site);
    let pow_port = pow_server.port();
    let hp = parallel(3 * k, |i| pow_visitor(pow_port, i));
    rows.push(tally(
        "(h) visitor on the proof-of-work path",
        &pow_site,
        &hp,
    ));
    drop(pow_server);

    eprintln!(
        "\nbot suite ({} attempts, {:.0} s; behind nginx + fcgiwrap, default spam settings)\n\
         | class | attempts | delivered | quarantined | refused |\n|---|---|---|---|---|",
        rows.iter().map(|r| r.attempts).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    for r in &rows {
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            r.class, r.attempts, r.delivered, r.quarantined, r.refused
        );
    }
}
