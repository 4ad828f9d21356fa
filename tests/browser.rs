//! The example contact page (`deploy/site/`) in a real browser: headless Debian Chromium,
//! driven by Playwright from `tests/browser/flow.mjs`, loads the page through a web server
//! that runs the real executables as CGI programs, and sends the form the way a visitor
//! does: once with scripts off (the plain form and the executables' own pages), once with
//! `contact.js` on the English page and once on the German one. Each run goes through a wrong
//! CAPTCHA answer (and, with the script, server-side field errors) before it succeeds.
//!
//! The browser learns CAPTCHA answers only from the header that test builds add. The node
//! script reports what the visitor saw as one flat JSON object; this test asserts on it and
//! then on the runtime tree: every successful form arrived exactly once and the refused
//! ones never did.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules` (scripts/test.sh
//! installs all three through scripts/install-test-deps.sh); a missing one fails the test
//! with a message that says how to install it.

use crate::util::servers::{Nginx, Server};
use crate::util::{self, Site};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// The scenarios of flow.mjs on a site with the default challenge policy, each of which
/// sends exactly one message.
const SCENARIOS: [&str; 4] = ["nojs", "js", "de", "audio"];

#[test]
fn contact_page_works_with_and_without_its_script_in_english_and_german() {
    let site = Site::new();
    // Through nginx and fcgiwrap with deploy/nginx/cgi.conf, as a host runs it: the page,
    // its stylesheet and script come from nginx, every form and image from a CGI process.
    let server = Nginx::start_cgi(&site);
    let base = format!("http://127.0.0.1:{}", server.port());
    let marker = unique_marker();
    // Screenshots go to FW_BROWSER_SHOTS when a developer wants to look at them; otherwise
    // they are still taken (so that path is exercised) and vanish with the temp tree.
    let shots = std::env::var_os("FW_BROWSER_SHOTS")
        .map_or_else(|| site.root().join("shots"), PathBuf::from);
    std::fs::create_dir_all(&shots).expect("screenshot folder");

    let r = run_flow(&server, &base, &marker, &shots, &[]);

    // What the visitor saw without JavaScript: the executables' own pages.
    let ok = r.get("nojs.ok_status");
    assert!(ok == "200" || ok == "202", "no-JS success status {ok}");
    r.eq("nojs.page_status", "200");
    r.eq("nojs.script_ran", "false");
    r.eq("nojs.new_image_status", "200");
    r.eq("nojs.new_image_changed", "true");
    r.contains(
        "nojs.new_image_kept",
        "Ada Lovelace|Sent without JavaScript.",
    );
    r.eq("nojs.wrong_status", "403");
    r.eq("nojs.wrong_h1", "Your message was not sent");
    r.contains(
        "nojs.wrong_alert",
        "The characters from the image did not match",
    );
    r.eq("nojs.wrong_kept_name", "Ada Lovelace");
    r.eq("nojs.wrong_new_challenge", "true");
    r.contains("nojs.wrong_image_alt", "Security image");
    r.eq("nojs.ok_h1", "Thank you");
    r.contains("nojs.ok_text", "Your message has been");
    r.eq("nojs.posts", &format!("403,{ok}"));
    r.eq("nojs.post_accept_json", "false");
    r.eq("nojs.post_sent_captcha_id", "false");

    // With contact.js on the English page: inline errors, live region, focus, new images.
    let ok = r.get("js.ok_status");
    assert!(ok == "200" || ok == "202", "script success status {ok}");
    r.eq("js.page_status", "200");
    r.eq("js.captcha_requests_on_load", "1");
    r.eq("js.new_image_in_place", "true");
    r.eq("js.new_image_is_data", "true");
    r.eq("js.new_image_status", "A new security image is shown.");
    r.eq("js.fields_status", "422");
    r.eq("js.fields_live", "Please correct the marked fields.");
    r.eq("js.fields_invalid", "name,email");
    r.eq("js.fields_focus", "f-name");
    r.eq("js.fields_name_error", "Name is required");
    r.eq("js.fields_name_described", "true");
    r.eq(
        "js.fields_email_error",
        "E-mail address is not a valid e-mail address",
    );
    r.eq("js.fields_cleared_on_input", "true");
    r.eq("js.wrong_status", "403");
    r.contains(
        "js.wrong_live",
        "The characters from the image did not match",
    );
    r.eq("js.wrong_invalid", "captcha");
    r.eq("js.wrong_focus", "f-captcha");
    r.contains(
        "js.wrong_captcha_error",
        "The characters from the image did not match",
    );
    r.eq("js.wrong_captcha_described", "true");
    r.contains("js.ok_live", "Thank you! Your message has been");
    r.eq("js.ok_state", "ok");
    r.eq("js.ok_focus", "form-status");
    r.eq("js.ok_form_reset", "true");
    r.eq("js.posts", &format!("422,403,{ok}"));
    r.eq("js.post_accept_json", "true");
    r.eq("js.post_lang", "en");
    r.eq("js.url_unchanged", "true");

    // The German page with its script: the executables answer in German although the
    // browser itself asks for English, because the script names the page's language.
    let ok = r.get("de.ok_status");
    assert!(ok == "200" || ok == "202", "German success status {ok}");
    r.eq("de.page_status", "200");
    r.eq("de.html_lang", "de");
    r.eq("de.link_to_english", "English");
    r.eq("de.fields_status", "422");
    r.eq(
        "de.fields_live",
        "Bitte korrigieren Sie die markierten Felder.",
    );
    r.eq("de.fields_focus", "f-email");
    r.eq(
        "de.fields_email_error",
        "E-Mail-Adresse ist keine gültige E-Mail-Adresse",
    );
    r.eq("de.wrong_status", "403");
    r.contains("de.wrong_live", "Die Zeichen aus dem Bild stimmten nicht");
    r.eq("de.wrong_focus", "f-captcha");
    let german_ok = if ok == "200" {
        "Vielen Dank! Ihre Nachricht wurde gesendet."
    } else {
        "Vielen Dank! Ihre Nachricht ist angekommen und gespeichert."
    };
    r.contains("de.ok_live", german_ok);
    r.eq("de.ok_focus", "form-status");
    r.eq("de.posts", &format!("422,403,{ok}"));
    r.eq("de.post_lang", "de");

    // A visitor on the audio path: Chromium plays the recording of the page's challenge,
    // plays the same one again, and the characters heard pass.
    r.eq("audio.page_status", "200");
    r.eq("audio.duration_ok", "true");
    r.eq("audio.src_names_challenge", "true");
    // Chromium asks for `Range: bytes=0-`, and gets the range.
    r.eq("audio.first", "206 audio/wav");
    r.eq("audio.again_status", "206");
    r.eq("audio.again_same", "true");
    let ok = r.get("audio.ok_status");
    assert!(ok == "200" || ok == "202", "audio success status {ok}");

    drop(server);
    assert_arrived_once(&site, &marker, &r, &SCENARIOS);
}

/// Proof-of-work in Chromium under `spam.challenge = "pow-or-image"` at the default
/// difficulty: the page's worker solves each puzzle, the visitor types no characters, and
/// the message arrives. The worker's times are printed (a benchmark figure for
/// docs/SPAM.md, never asserted).
#[test]
fn proof_of_work_lets_a_script_visitor_through_without_typing() {
    let site = Site::with(
        "",
        "[spam]\nmin_fill_seconds = 0\nchallenge = \"pow-or-image\"\n",
    );
    let server = Nginx::start_cgi(&site);
    let base = format!("http://127.0.0.1:{}", server.port());
    let marker = unique_marker();
    let shots = site.root().join("shots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let r = run_flow(&server, &base, &marker, &shots, &["--only", "pow"]);
    r.eq("pow.page_status", "200");
    r.eq("pow.runs", "5");
    r.eq("pow.bits", "18");
    r.eq("pow.captcha_required", "false");
    r.contains("pow.status_text", "you need not type the characters");
    r.eq("pow.post_had_work", "true");
    r.eq("pow.post_captcha", "");
    let ok = r.get("pow.ok_status");
    assert!(ok == "200" || ok == "202", "pow success status {ok}");
    eprintln!(
        "proof-of-work in Chromium at {} bits: {} ms for {} hashes",
        r.get("pow.bits"),
        r.get("pow.ms"),
        r.get("pow.tried")
    );
    drop(server);
    assert_arrived_once(&site, &marker, &r, &["pow"]);
}

/// Every successful scenario's message is in the runtime tree exactly once: delivered into
/// the mail-out folder when the answer said "sent" (200), waiting in `spool/new/` when it
/// said "queued" (202); nothing else was accepted, and no client address was written.
fn assert_arrived_once(site: &Site, marker: &str, r: &Report, scenarios: &[&str]) {
    let delivered = contents(&site.var("mail-out"));
    let waiting = contents(&site.var("spool/new"));
    for &scenario in scenarios {
        let tag = format!("{marker}-{scenario}");
        let count = |files: &[(String, String)]| {
            files.iter().filter(|(_, text)| text.contains(&tag)).count()
        };
        let (sent, queued) = (count(&delivered), count(&waiting));
        match r.get(&format!("{scenario}.ok_status")) {
            "200" => assert_eq!((sent, queued), (1, 0), "{scenario}: delivered once"),
            _ => assert_eq!((sent, queued), (0, 1), "{scenario}: queued once"),
        }
    }
    assert_eq!(
        delivered.len() + waiting.len(),
        scenarios.len(),
        "exactly one message per scenario: {:?} {:?}",
        names(&delivered),
        names(&waiting)
    );
    for path in util::walk(&site.var("")) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("127.0.0.1"),
            "{} holds a client address",
            path.display()
        );
    }
}

/// (file name, text) of every file in `dir`.
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = util::walk(dir)
        .into_iter()
        .map(|p| {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into();
            (p.display().to_string(), text)
        })
        .collect();
    v.sort();
    v
}

fn names(files: &[(String, String)]) -> Vec<&str> {
    files.iter().map(|(n, _)| n.as_str()).collect()
}

/// A string no earlier run left in a message, so a count of it means this run.
fn unique_marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("fwbrowser{}x{nanos}", std::process::id())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs flow.mjs against `base` and parses its report; a failure shows the server's logs.
fn run_flow(server: &Server, base: &str, marker: &str, shots: &Path, extra: &[&str]) -> Report {
    let dir = repo().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `bash scripts/install-test-deps.sh`"
    );
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: run `bash scripts/install-test-deps.sh`"
    );
    let out = Command::new("node")
        .arg(dir.join("flow.mjs"))
        .args(["--base", base, "--marker", marker, "--shots"])
        .arg(shots)
        .args(extra)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (install Node.js): {e}"));
    let text = format!(
        "{}\n(stderr: {})\nserver logs:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let report = Report::parse(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|why| panic!("flow.mjs printed no flat JSON object ({why}):\n{text}"));
    assert!(
        out.status.success() && !report.values.contains_key("error"),
        "flow.mjs failed ({}):\n{text}",
        out.status
    );
    assert_eq!(
        report.get("failures"),
        "",
        "checks in flow.mjs failed:\n{text}"
    );
    report
}

/// flow.mjs's report: a flat JSON object, every value kept as text (strings unescaped,
/// numbers and booleans as written). The bot suite reads its OCR runs through it too.
pub(crate) struct Report {
    values: BTreeMap<String, String>,
    raw: String,
}

impl Report {
    pub(crate) fn get(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("flow.mjs reported no {key}:\n{}", self.raw))
    }

    fn eq(&self, key: &str, want: &str) {
        assert_eq!(self.get(key), want, "{key} in:\n{}", self.raw);
    }

    fn contains(&self, key: &str, want: &str) {
        let got = self.get(key);
        assert!(got.contains(want), "{key} = {got:?} lacks {want:?}");
    }

    /// Parses the one flat object; anything else (nesting, trailing text) is an error,
    /// because flow.mjs promises exactly this shape.
    pub(crate) fn parse(raw: &str) -> Result<Report, String> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw).map_err(|e| e.to_string())?;
        let values = object
            .into_iter()
            .map(|(k, v)| match util::json_text(&v) {
                Some(text) => Ok((k, text)),
                None => Err(format!("{k} is not a flat value")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Report {
            values,
            raw: raw.to_string(),
        })
    }
}

/// The report's values as the assertions above compare them: numbers and booleans as
/// JSON.stringify writes them, and no nesting.
#[test]
fn report_values_are_flat_text() {
    let r = Report::parse("{\n \"a\": \"x\\n\\u00e4\",\n \"b\": 422,\n \"c\": false\n}\n")
        .expect("parses");
    assert_eq!(r.get("a"), "x\nä");
    assert_eq!(r.get("b"), "422");
    assert_eq!(r.get("c"), "false");
    assert!(Report::parse("{\"a\": {\"b\": 1}}").is_err());
    assert!(Report::parse("{\"a\": 1} trailing").is_err());
}
