//! The three HTTP endpoints (CAPTCHA GET, contact POST, token verify/rotate) as functions
//! from a request to a response, plus the mapping from library errors to HTTP answers.
//! Executables call these and write the result; the functions never panic on input and
//! never print anything themselves. Each answer is a real status code: 405 wrong method,
//! 411/413/415/400 bad bodies, 422 bad fields, 403 failed CAPTCHA, 429 over the limit,
//! 503 with `Retry-After` when a lock or the disk is temporarily unavailable, 500 when
//! the installation is broken.

use crate::app::App;
use crate::captcha::{Outcome, Policy};
use crate::cgi::{BodyError, Request, Response};
use crate::config::{Language, TooSoon};
use crate::error::Error;
use crate::form::{self, FieldError, Fields, Problem};
use crate::json::Json;
use crate::pages::{self, Lang, Msg, PageCtx, text};
use crate::ratelimit::{Bucket, Verdict};
use crate::screen::{self, Rule};
use crate::state::now;
use base64::Engine as _;
use std::io::Read;

/// Name of the cookie that carries the challenge id to a plain HTML form.
pub const CAPTCHA_COOKIE: &str = "fw_captcha";

fn ctx_for(req: &Request, app: Option<&App>, own: &str) -> PageCtx {
    let language = app.map_or(Language::Auto, |a| a.config.language);
    let lang = Lang::choose(language, req);
    let contact = if own == "contact" {
        req.script_name().to_string()
    } else {
        req.sibling_url(own, "contact")
    };
    // Links back to the form keep the page's language.
    let contact_url = format!("{contact}?lang={}", lang.code());
    let error_title = if own == "captcha" {
        Msg::UnavailableTitle
    } else {
        Msg::ErrorTitle
    };
    PageCtx {
        error_title,
        lang,
        site_name: app.map_or_else(|| "formwarden".to_string(), |a| a.config.site_name.clone()),
        contact_url,
        captcha_url: req.sibling_url(own, "captcha"),
        json: req.wants_json(),
        image: own == "captcha" && req.wants_image(),
        template_dir: app.map(|a| a.layout.config_dir()),
        stylesheet: app.and_then(|a| a.config.stylesheet.clone()),
    }
}

/// What the visitor was doing when an error struck; it decides the wording, so an image
/// request is never told about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    /// Fetching the security image (or its JSON).
    Image,
    /// Looking at the form.
    Form,
    /// Sending a message: the answer must say it was NOT received.
    Message,
}

/// Logs `e` once for the operator (a warning when it is temporary, else an error) under a
/// short random reference, and returns the reference, which the visitor's answer shows
/// instead of the detail.
fn log_with_reference(e: &Error, what: &str) -> String {
    let reference = crate::random::bytes::<5>()
        .map(|b| crate::random::hex(&b))
        .unwrap_or_else(|_| format!("t{}", now()));
    if e.is_temporary() {
        tracing::warn!(reference, error = %e, "{what} temporarily unavailable");
    } else {
        tracing::error!(reference, error = %e, "{what} failed");
    }
    reference
}

/// Maps a library error to an answer, logging it once for the operator.
///
/// A visitor's page or JSON never contains a file path, an operating-system error text or
/// a config value, whatever the error: the detail goes to the log once, with a short
/// reference that the page shows too. The one exception is the lock-timeout text of the
/// locking contract (`Lock-Timeout nach 300ms: {key}`), which names only a normalized key.
pub fn error_response(ctx: &PageCtx, e: &Error, form: Option<&Fields>, doing: Doing) -> Response {
    let l = ctx.lang;
    let temporary = e.is_temporary();
    let detail = if let Error::LockTimeout { .. } = e {
        tracing::warn!(error = %e, "temporarily unavailable");
        e.to_string()
    } else {
        let reference = log_with_reference(e, "request");
        format!("{}: {reference}", text(l, Msg::Reference))
    };
    let msg = match (doing, temporary) {
        (Doing::Message, _) => Msg::NotReceived,
        (Doing::Image, true) => Msg::ImageBusy,
        (Doing::Image, false) => Msg::ImageFailed,
        (Doing::Form, true) => Msg::Busy,
        (Doing::Form, false) => Msg::ServerError,
    };
    if temporary {
        let retry = e.retry_after();
        return pages::error(
            ctx,
            503,
            "unavailable",
            text(l, msg),
            &[],
            form,
            Some(&detail),
        )
        .header("Retry-After", retry.to_string());
    }
    pages::error(
        ctx,
        500,
        "server_error",
        text(l, msg),
        &[],
        form,
        Some(&detail),
    )
}

fn method_not_allowed(ctx: &PageCtx, allow: &str) -> Response {
    pages::error(
        ctx,
        405,
        "method_not_allowed",
        text(ctx.lang, Msg::WrongMethod),
        &[],
        None,
        None,
    )
    .header("Allow", allow)
}

fn rate_limited(ctx: &PageCtx, retry_after: u64, form: Option<&Fields>) -> Response {
    pages::error(
        ctx,
        429,
        "rate_limited",
        text(ctx.lang, Msg::RateLimited),
        &[],
        form,
        None,
    )
    .header("Retry-After", retry_after.to_string())
}

/// Answers HEAD exactly like GET (the same work, status and headers), without the body.
fn head_like_get(req: Request, body: &mut dyn Read, f: crate::handler::Handler) -> Response {
    let head = req.method() == "HEAD";
    let resp = f(req, body);
    if head { resp.into_head() } else { resp }
}

/// `GET captcha`: a new challenge as PNG (id in a cookie) or, for scripts, as JSON.
pub fn captcha(req: Request, body: &mut dyn Read) -> Response {
    head_like_get(req, body, captcha_get)
}

/// Name of the cookie that tells the page's script the proof-of-work difficulty of the
/// challenge the picture belongs to (only under a proof-of-work policy).
pub const POW_COOKIE: &str = "fw_pow";

fn captcha_get(req: Request, _body: &mut dyn Read) -> Response {
    test_hook_panic(&req);
    let app = App::discover();
    let ctx = ctx_for(&req, app.as_ref().ok(), "captcha");
    if !matches!(req.method().as_str(), "GET" | "HEAD") {
        return method_not_allowed(&ctx, "GET, HEAD");
    }
    let app = match app {
        Ok(a) => a,
        Err(e) => return error_response(&ctx, &e, None, Doing::Image),
    };
    let t = now();
    // Pictures and recordings share one budget: a recording is another way to the same
    // challenge, and must not be a way around the limit.
    let remaining = match app
        .limiter
        .hit(&app.client_key(&req), Bucket::CaptchaGet, t)
    {
        Ok(Verdict::Admitted { remaining }) => remaining,
        Ok(Verdict::Limited { retry_after }) => return rate_limited(&ctx, retry_after, None),
        Err(e) => return error_response(&ctx, &e, None, Doing::Image),
    };
    // The client's key was the one lock others wait on; the challenge's key is its own.
    crate::run::done_with_locks();
    if req.query_param("audio").is_some() {
        return recording(&req, &app, &ctx, t);
    }
    let max = app.config.captcha_max_get.max(1) as f32;
    let fill = 1.0 - remaining as f32 / max;
    let challenge = match app.captcha.create(t, fill) {
        Ok(c) => c,
        Err(e) => return error_response(&ctx, &e, None, Doing::Image),
    };
    retry_after_answer(&app);
    crate::sweep::maybe_run(&app, t);
    let png = match crate::random::bytes::<32>().and_then(|seed| {
        crate::captcha_image::render_png(&challenge.answer, seed)
            .map_err(|e| Error::Render(e.to_string()))
    }) {
        Ok(p) => p,
        Err(e) => return error_response(&ctx, &e, None, Doing::Image),
    };
    picture_answer(&req, &app, &ctx, &challenge, png, t)
}

/// The answer that carries a fresh challenge's picture: the PNG itself, or for a script
/// the JSON with the picture as a `data:` URL, plus the challenge cookie (and the
/// proof-of-work cookie under that policy).
fn picture_answer(
    req: &Request,
    app: &App,
    ctx: &PageCtx,
    challenge: &crate::captcha::Challenge,
    png: Vec<u8>,
    t: u64,
) -> Response {
    let lifetime = challenge.expires_at.saturating_sub(t);
    // Not HttpOnly: the page's script reads the id once the picture has loaded and sends
    // it in the form, so that another tab's picture (which replaces the cookie) cannot
    // swap this page's challenge. The id opens nothing by itself; the JSON answer hands it
    // to scripts anyway.
    let cookie = |name: &str, value: &str| {
        let mut c = format!("{name}={value}; Path=/; Max-Age={lifetime}; SameSite=Lax");
        if req.is_https() {
            c.push_str("; Secure");
        }
        c
    };
    let pow = (challenge.pow_bits > 0).then(|| {
        Json::obj([
            ("algorithm", Json::str("SHA-256")),
            ("bits", Json::Int(i64::from(challenge.pow_bits))),
        ])
    });
    let resp = if ctx.json {
        Response::json(
            200,
            Json::obj([
                ("id", Json::str(challenge.id.clone())),
                (
                    "image",
                    Json::str(format!(
                        "data:image/png;base64,{}",
                        base64::engine::general_purpose::STANDARD.encode(&png)
                    )),
                ),
                ("width", Json::Int(i64::from(crate::captcha_image::WIDTH))),
                ("height", Json::Int(i64::from(crate::captcha_image::HEIGHT))),
                ("expires_in", Json::Int(lifetime as i64)),
                ("policy", Json::str(app.config.spam.challenge.name())),
                ("pow", pow.unwrap_or(Json::Null)),
            ])
            .render(),
        )
    } else {
        Response::bytes(200, "image/png", png)
    };
    let mut resp = resp.header("Set-Cookie", cookie(CAPTCHA_COOKIE, &challenge.id));
    if challenge.pow_bits > 0 {
        let value = format!(
            "{}.{}",
            challenge.pow_bits,
            app.config.spam.challenge.name()
        );
        resp = resp.header("Set-Cookie", cookie(POW_COOKIE, &value));
    }
    test_hook_answer(resp, &challenge.answer)
}

/// `GET captcha?audio=1`: the one recording of the challenge named by `id` (the page's
/// script) or the cookie (a page without script), spoken in the page's language.
fn recording(req: &Request, app: &App, ctx: &PageCtx, t: u64) -> Response {
    let id = req
        .query_param("id")
        .or_else(|| req.cookie(CAPTCHA_COOKIE))
        .unwrap_or_default();
    let (answer, seed, voice) = match app.captcha.recording(&id, t, ctx.lang.code()) {
        Ok(crate::captcha::Recording::Answer {
            answer,
            seed,
            voice,
        }) => (answer, seed, voice),
        Ok(crate::captcha::Recording::Unavailable) => {
            tracing::info!(
                "recording refused: the challenge is used, expired, unknown or from before an upgrade"
            );
            let msg = text(ctx.lang, Msg::AudioUnavailable);
            return pages::error(ctx, 410, "audio_unavailable", msg, &[], None, None);
        }
        Err(e) => return error_response(ctx, &e, None, Doing::Image),
    };
    // The voice stored with the recording's seed, not this request's language.
    let voice = match Lang::from_code(&voice).unwrap_or(ctx.lang) {
        Lang::En => crate::captcha_audio::Voice::En,
        Lang::De => crate::captcha_audio::Voice::De,
    };
    let wav = match crate::captcha_audio::render_wav(&answer, voice, seed) {
        Ok(w) => w,
        Err(e) => {
            return error_response(ctx, &Error::Render(e.to_string()), None, Doing::Image);
        }
    };
    let resp = match byte_range(req.header("range"), wav.len()) {
        Some((first, last)) => Response::bytes(206, "audio/wav", wav[first..=last].to_vec())
            .header(
                "Content-Range",
                format!("bytes {first}-{last}/{}", wav.len()),
            ),
        None => Response::bytes(200, "audio/wav", wav),
    };
    test_hook_answer(resp.header("Accept-Ranges", "bytes"), &answer)
}

/// The one byte range of a `Range: bytes=…` header that a media player sends (`a-b`, `a-`
/// or `-n`), clamped to `len`; `None` for no header, several ranges or anything else, which
/// then get the whole file. Safari plays media only from servers that answer ranges.
fn byte_range(header: Option<&str>, len: usize) -> Option<(usize, usize)> {
    let spec = header?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (first, last) = match (a.trim(), b.trim()) {
        ("", n) => (len.saturating_sub(n.parse().ok()?), len - 1),
        (a, "") => (a.parse().ok()?, len - 1),
        (a, b) => (a.parse().ok()?, b.parse::<usize>().ok()?.min(len - 1)),
    };
    (first <= last && first < len).then_some((first, last))
}

/// Test builds (feature `test-hooks`, never in release packages) reveal the answer in a
/// header so the end-to-end tests can solve the CAPTCHA.
#[cfg(feature = "test-hooks")]
fn test_hook_answer(resp: Response, answer: &str) -> Response {
    resp.header("X-Formwarden-Test-Answer", answer)
}

#[cfg(not(feature = "test-hooks"))]
fn test_hook_answer(resp: Response, _answer: &str) -> Response {
    resp
}

/// Test builds only: a request with `X-Formwarden-Test-Panic` panics, so the suite can
/// check what a handler bug does to a FastCGI responder built with the release profile.
#[cfg(feature = "test-hooks")]
#[allow(
    clippy::panic,
    reason = "the hook exists to panic, in test builds only"
)]
fn test_hook_panic(req: &Request) {
    if req.header("x-formwarden-test-panic").is_some() {
        panic!("test hook: a handler bug");
    }
}

#[cfg(not(feature = "test-hooks"))]
fn test_hook_panic(_req: &Request) {}

/// `GET contact` shows the form; `POST contact` takes a message.
pub fn contact(req: Request, body: &mut dyn Read) -> Response {
    head_like_get(req, body, contact_any)
}

fn contact_any(mut req: Request, body: &mut dyn Read) -> Response {
    let app = App::discover();
    let ctx = ctx_for(&req, app.as_ref().ok(), "contact");
    let method = req.method();
    if method == "GET" || method == "HEAD" {
        return match app {
            Ok(_) => Response::html(200, pages::form_html(&ctx, &[], &[], &Fields::new())),
            Err(e) => error_response(&ctx, &e, None, Doing::Form),
        };
    }
    if method != "POST" {
        return method_not_allowed(&ctx, "GET, HEAD, POST");
    }
    let app = match app {
        Ok(a) => a,
        Err(e) => return error_response(&ctx, &e, None, Doing::Message),
    };
    // The stages of a POST, each of which may end it with its own answer: the body read
    // and parsed, the fields checked, the gates passed (rate limit, CAPTCHA or work, time
    // trap), and the message accepted (screened, saved, handed to delivery).
    let outcome = read_form(&mut req, body, &app, &ctx).and_then(|fields| {
        let submission = check_fields(fields, &app, &ctx)?;
        let t = now();
        let issued_at = pass_gates(&req, &submission, &app, &ctx, t)?;
        Ok(accept(submission, issued_at, &app, &ctx, t))
    });
    outcome.unwrap_or_else(|answer| answer)
}

/// A checked contact POST: the message, the visitor's answer to the challenge, and the
/// fields to refill the form with if anything later refuses it.
struct Submission {
    fields: Fields,
    contact: form::Contact,
    answer: String,
    work: Option<String>,
    refill: Fields,
}

/// Reads and parses the body of a contact POST: a form of the right type and size.
fn read_form(
    req: &mut Request,
    body: &mut dyn Read,
    app: &App,
    ctx: &PageCtx,
) -> Result<Fields, Response> {
    let l = ctx.lang;
    if req.content_type().as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(pages::error(
            ctx,
            415,
            "unsupported_media_type",
            text(l, Msg::WrongType),
            &[],
            None,
            None,
        ));
    }
    if let Err(e) = req.read_body(body, app.config.max_body_bytes) {
        let (status, code, msg) = match e {
            BodyError::TooLarge { .. } => (413, "too_large", Msg::TooLarge),
            BodyError::LengthRequired => (411, "length_required", Msg::BadRequest),
            BodyError::Truncated => (400, "bad_request", Msg::BadRequest),
        };
        return Err(pages::error(
            ctx,
            status,
            code,
            text(l, msg),
            &[],
            None,
            None,
        ));
    }
    form::parse_urlencoded(&req.body).map_err(|why| {
        tracing::info!(why, "malformed form body");
        pages::error(
            ctx,
            400,
            "bad_request",
            text(l, Msg::BadRequest),
            &[],
            Some(&Fields::new()),
            None,
        )
    })
}

/// Checks the fields of a parsed form: the "Show a new image" post-back, the message's
/// own fields, and that an answer to the challenge is there (characters, or work where
/// the policy lets work stand in for them).
fn check_fields(fields: Fields, app: &App, ctx: &PageCtx) -> Result<Submission, Response> {
    let mut refill = fields.clone();
    refill.remove("captcha");
    refill.remove("pow");
    // "Show a new image" on the page without script posts the form back, so that nothing
    // typed is lost: the same form, filled in, with a fresh picture. Nothing else happens.
    if fields.get(pages::NEW_IMAGE_ACTION.0).map(String::as_str) == Some(pages::NEW_IMAGE_ACTION.1)
    {
        return Err(Response::html(
            200,
            pages::form_html(ctx, &[], &[], &refill),
        ));
    }
    let answer = fields
        .get("captcha")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let work = fields
        .get("pow")
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty());
    let (contact, mut errors) = match form::validate(&fields) {
        Ok(c) => (Some(c), Vec::new()),
        Err(e) => (None, e),
    };
    // The mail library must accept the address as a Reply-To, or the message could never
    // be built; refuse it now, before anything is saved.
    if let Some(c) = &contact
        && let Err(why) = crate::mail::reply_to(&c.name, &c.email)
    {
        tracing::info!(why, "address refused by the mail builder");
        errors.push(FieldError {
            field: "email",
            problem: Problem::BadEmail,
        });
    }
    // Under "pow-or-image" the script's work stands in for the characters.
    if answer.is_empty() && !(app.config.spam.challenge == Policy::WorkOrImage && work.is_some()) {
        errors.push(FieldError {
            field: "captcha",
            problem: Problem::Missing,
        });
    }
    match contact {
        Some(contact) if errors.is_empty() => Ok(Submission {
            fields,
            contact,
            answer,
            work,
            refill,
        }),
        _ => Err(pages::error(
            ctx,
            422,
            "invalid_fields",
            text(ctx.lang, Msg::FixFields),
            &errors,
            Some(&refill),
            None,
        )),
    }
}

/// The gates a checked message must pass before it is accepted: the client's rate limit,
/// the work the policy demands, and the challenge (its answer or work, and the time trap
/// in its "send again" form, decided under the challenge's lock). Returns when the
/// challenge was issued.
fn pass_gates(
    req: &Request,
    s: &Submission,
    app: &App,
    ctx: &PageCtx,
    t: u64,
) -> Result<u64, Response> {
    let l = ctx.lang;
    match app
        .limiter
        .hit(&app.client_key(req), Bucket::ContactPost, t)
    {
        Ok(Verdict::Admitted { .. }) => {}
        Ok(Verdict::Limited { retry_after }) => {
            return Err(rate_limited(ctx, retry_after, Some(&s.refill)));
        }
        Err(e) => return Err(error_response(ctx, &e, Some(&s.refill), Doing::Message)),
    }
    let challenge_id = s
        .fields
        .get("captcha_id")
        .cloned()
        .or_else(|| req.cookie(CAPTCHA_COOKIE))
        .unwrap_or_default();
    let spam = &app.config.spam;
    if spam.challenge == Policy::ImageAndWork && s.work.is_none() {
        tracing::info!("no proof-of-work under spam.challenge = \"image+pow\"");
        return Err(pages::error(
            ctx,
            422,
            "needs_script",
            text(l, Msg::NeedsScript),
            &[],
            Some(&s.refill),
            None,
        ));
    }
    // The time trap, from the server's own record of when the challenge was issued,
    // checked under the challenge's lock before the answer: a visitor asked to send again
    // keeps the challenge.
    let hold = (!spam.min_fill.is_zero() && spam.too_soon == TooSoon::Retry)
        .then_some(spam.min_fill.as_secs());
    let attempt = crate::captcha::Attempt {
        answer: &s.answer,
        work: s.work.as_deref(),
        hold_sooner_than: hold,
    };
    let verified = app
        .captcha
        .verify(&challenge_id, &attempt, t)
        .map_err(|e| error_response(ctx, &e, Some(&s.refill), Doing::Message))?;
    match verified.outcome {
        Outcome::Passed => Ok(verified.issued_at),
        Outcome::TooSoon => {
            tracing::info!(
                rule = "too_soon",
                "sent sooner than spam.min_fill_seconds; asked to send again"
            );
            Err(pages::error(
                ctx,
                422,
                "too_soon",
                text(l, Msg::TooSoon),
                &[],
                Some(&s.refill),
                None,
            ))
        }
        o => {
            tracing::info!(outcome = ?o, "CAPTCHA refused");
            let (code, msg) = match o {
                Outcome::Wrong { .. } | Outcome::Exhausted => ("captcha_wrong", Msg::CaptchaWrong),
                _ => ("captcha_stale", Msg::CaptchaStale),
            };
            Err(pages::error(
                ctx,
                403,
                code,
                text(l, msg),
                &[],
                Some(&s.refill),
                None,
            ))
        }
    }
}

/// Accepts a message that passed the gates: the content rules and the honeypot decide
/// whether it is refused, quarantined or saved for delivery; a saved message is handed to
/// delivery at once.
fn accept(s: Submission, issued_at: u64, app: &App, ctx: &PageCtx, t: u64) -> Response {
    let spam = &app.config.spam;
    // The time trap in its quarantine form: the challenge passed, but too soon.
    let too_soon =
        !spam.min_fill.is_zero() && t.saturating_sub(issued_at) < spam.min_fill.as_secs();
    // What follows takes only this message's own spool key, which nobody waits on.
    crate::run::done_with_locks();
    let held_for = match screening(&s.fields, &s.contact, spam, too_soon) {
        Ok(held_for) => held_for,
        Err(rules) => return refused(ctx, &rules, &s.refill),
    };
    let domain = crate::mail::domain_of(&app.config.mail.from);
    if !held_for.is_empty() {
        let reasons = held_for.iter().map(|r| r.name().to_string()).collect();
        return match app.spool.save_quarantined(
            &s.contact,
            t,
            &domain,
            reasons,
            spam.max_quarantine,
        ) {
            Ok(msg) => {
                crate::deadline::note_saved();
                retry_after_answer(app);
                // The normal success answer: a sender must not learn which rule held the
                // message (a bot would adapt), and a person's message is safe in the
                // quarantine until the operator releases it.
                success(ctx, &msg.id, true)
            }
            Err(e) => error_response(ctx, &e, Some(&s.refill), Doing::Message),
        };
    }
    let msg = match app.spool.save(&s.contact, t, &domain) {
        Ok(m) => m,
        Err(e) => return error_response(ctx, &e, Some(&s.refill), Doing::Message),
    };
    crate::deadline::note_saved();
    let delivered = crate::delivery::deliver_fresh(&app.delivery(), &msg.id, t);
    retry_after_answer(app);
    success(ctx, &msg.id, delivered)
}

/// The spam layers after the CAPTCHA: the rules that quarantine the message (empty: send
/// it), or `Err` with the rules that refuse it. A filled honeypot quarantines whatever
/// else matched, so that a bot gets the normal answer and learns nothing.
fn screening(
    fields: &Fields,
    contact: &form::Contact,
    spam: &crate::config::SpamConfig,
    too_soon: bool,
) -> Result<Vec<Rule>, Vec<Rule>> {
    let mut held = Vec::new();
    if screen::honeypot_filled(fields) {
        held.push(Rule::Honeypot);
    }
    if too_soon {
        held.push(Rule::TooSoon);
    }
    match screen::verdict(&screen::findings(contact, &spam.rules)) {
        screen::Verdict::Reject(rules) if held.is_empty() => return Err(rules),
        screen::Verdict::Reject(rules) | screen::Verdict::Quarantine(rules) => held.extend(rules),
        screen::Verdict::Deliver => {}
    }
    Ok(held)
}

/// The page for a message a content rule refuses: what to change, the form refilled.
fn refused(ctx: &PageCtx, rules: &[Rule], refill: &Fields) -> Response {
    tracing::info!(rules = ?rules, "message refused by a content rule");
    let wording: Vec<&str> = rules
        .iter()
        .filter_map(|r| match r {
            Rule::Links => Some(Msg::RejectLinks),
            Rule::GibberishName => Some(Msg::RejectName),
            Rule::RepeatedField => Some(Msg::RejectRepeated),
            Rule::BlockedWord => Some(Msg::RejectWord),
            Rule::BlockedDomain => Some(Msg::RejectDomain),
            Rule::Honeypot | Rule::TooSoon => None,
        })
        .map(|m| text(ctx.lang, m))
        .collect();
    pages::error(
        ctx,
        422,
        "refused",
        &wording.join(" "),
        &[],
        Some(refill),
        None,
    )
}

/// Delivery for hosts without cron: once this answer is complete, one bounded retry step
/// (`delivery::retry_step`) tries a due spooled message. On by default
/// (`mail.retry_after_answer`); cron's `spool retry` remains the better choice where it
/// exists.
fn retry_after_answer(app: &App) {
    if !app.config.mail.retry_after_answer {
        return;
    }
    let app = app.clone();
    crate::handler::after_answer(move || {
        match crate::delivery::retry_step(&app.delivery(), now()) {
            Ok(Some(r)) if r.delivered + r.deferred + r.failed + r.errors > 0 => {
                tracing::info!(?r, "retry step after the answer");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retry step after the answer failed"),
        }
    });
}

fn success(ctx: &PageCtx, id: &str, delivered: bool) -> Response {
    let (status, state, body) = if delivered {
        (200, "sent", text(ctx.lang, Msg::SentText))
    } else {
        (202, "queued", text(ctx.lang, Msg::QueuedText))
    };
    if ctx.json {
        return Response::json(
            status,
            Json::obj([
                ("ok", Json::Bool(true)),
                ("status", Json::str(state)),
                ("id", Json::str(id)),
                ("message", Json::str(body)),
            ])
            .render(),
        );
    }
    Response::html(status, pages::message_html(ctx, Msg::SentTitle, body))
}

/// The bearer token of a request: `Authorization: Bearer …` or `X-Formwarden-Token`.
fn bearer(req: &Request) -> Option<String> {
    if let Some(auth) = req.header("authorization") {
        let (scheme, value) = auth.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(value.trim().to_string());
        }
    }
    req.header("x-formwarden-token")
        .map(|t| t.trim().to_string())
}

fn json_or_text(req: &Request, status: u16, code: &str, message: &str) -> Response {
    if req.wants_json() {
        Response::json(
            status,
            Json::obj([
                ("ok", Json::Bool(status < 300)),
                ("error", Json::str(code)),
                ("message", Json::str(message)),
            ])
            .render(),
        )
    } else {
        Response::text(status, format!("{message}\n"))
    }
}

fn token_error(req: &Request, e: &Error) -> Response {
    match e {
        // Both name only what the caller sent (a profile name), never a path.
        Error::InvalidInput { .. } => json_or_text(req, 400, "bad_request", &e.to_string()),
        Error::NotFound { .. } => json_or_text(req, 404, "not_found", &e.to_string()),
        Error::LockTimeout { .. } => {
            tracing::warn!(error = %e, "token endpoint unavailable");
            json_or_text(req, 503, "unavailable", &e.to_string()).header("Retry-After", "1")
        }
        e => {
            let reference = log_with_reference(e, "token endpoint");
            if e.is_temporary() {
                json_or_text(
                    req,
                    503,
                    "unavailable",
                    &format!("temporarily unavailable; reference {reference}"),
                )
                .header("Retry-After", e.retry_after().to_string())
            } else {
                json_or_text(
                    req,
                    500,
                    "server_error",
                    &format!(
                        "server problem; the server log has the reason under reference {reference}"
                    ),
                )
            }
        }
    }
}

/// The self-check report for an operator without a shell (admin token only): JSON for
/// scripts, else an HTML table. 200 when every check passed, 500 otherwise.
fn check_report(req: &Request) -> Response {
    let doc_root = req.var("DOCUMENT_ROOT").map(std::path::PathBuf::from);
    let findings = crate::check::run(doc_root.as_deref());
    let ok = findings.iter().all(|f| f.ok);
    let status = if ok { 200 } else { 500 };
    if req.wants_json() {
        let list = findings
            .iter()
            .map(|f| {
                Json::obj([
                    ("name", Json::str(f.name)),
                    ("ok", Json::Bool(f.ok)),
                    ("detail", Json::str(f.detail.clone())),
                ])
            })
            .collect();
        return Response::json(
            status,
            Json::obj([("ok", Json::Bool(ok)), ("checks", Json::Arr(list))]).render(),
        );
    }
    let rows: String = findings
        .iter()
        .map(|f| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                if f.ok { "ok" } else { "FAIL" },
                pages::escape(f.name),
                pages::escape(&f.detail)
            )
        })
        .collect();
    Response::html(
        status,
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>formwarden self-check</title></head>\n<body><h1>formwarden self-check</h1>\n<table>\n{rows}</table></body></html>\n"
        ),
    )
}

/// The token endpoint. `GET ?profile=P` with a bearer token answers 204 (valid) or 401,
/// for a web server's auth sub-request. `POST ?action=rotate&profile=P` rotates P when the
/// bearer token is valid for the admin profile, and shows the new token once. With an admin
/// token, `?action=check` is the self-check and `?action=spool&do=…` the mail spool.
pub fn tokens(req: Request, _body: &mut dyn Read) -> Response {
    let method = req.method();
    let action = req.query_param("action").unwrap_or_else(|| "verify".into());
    // The self-check reports folders that cannot be created instead of failing on them.
    let opened = if action == "check" {
        App::discover_as_is()
    } else {
        App::discover()
    };
    let app = match opened {
        Ok(a) => a,
        Err(e) => return token_error(&req, &e),
    };
    let profile = req.query_param("profile").unwrap_or_default();
    let t = now();
    let not_allowed = |message: &str, allow: &str| {
        json_or_text(&req, 405, "method_not_allowed", message).header("Allow", allow)
    };
    match (method.as_str(), action.as_str()) {
        ("GET" | "HEAD", "verify") => token_verify(&req, &app, &profile, t),
        ("POST", "rotate") => token_rotate(&req, &app, &profile, t),
        ("GET", "check") => token_check(&req, &app, t),
        (_, "spool") => token_spool(&req, &app, t),
        (_, "check") => not_allowed("check takes GET", "GET"),
        (_, "verify") => not_allowed("verify takes GET", "GET, HEAD"),
        (_, "rotate") => not_allowed("rotate takes POST", "POST"),
        _ => json_or_text(
            &req,
            400,
            "bad_request",
            "unknown action (verify, rotate, check or spool)",
        ),
    }
}

/// The answer to a request without a valid bearer token.
fn unauthorized(req: &Request) -> Response {
    json_or_text(req, 401, "unauthorized", "missing or invalid token")
        .header("WWW-Authenticate", "Bearer realm=\"formwarden\"")
}

/// `GET ?action=verify&profile=P`: 204 for a live token of P, else 401 (lock-free).
fn token_verify(req: &Request, app: &App, profile: &str, t: u64) -> Response {
    let Some(token) = bearer(req) else {
        return unauthorized(req);
    };
    match app.tokens.verify(profile, &token, t) {
        Ok(true) => Response::new(204),
        Ok(false) => unauthorized(req),
        Err(e) => token_error(req, &e),
    }
}

/// Who a bearer token speaks for on the admin actions.
enum AdminAccess {
    /// A live token of the admin profile.
    Admin,
    /// The one-time bootstrap secret (`tokens.bootstrap_sha256`), while the admin profile
    /// has no token yet.
    Bootstrap,
    /// Nobody.
    Refused,
}

fn admin_access(app: &App, token: &str, t: u64) -> Result<AdminAccess, Error> {
    let admin = &app.config.tokens.admin_profile;
    match app.tokens.verify(admin, token, t) {
        Ok(true) => Ok(AdminAccess::Admin),
        Ok(false) | Err(Error::NotFound { .. }) => {
            let digest = app.config.tokens.bootstrap_sha256.as_deref();
            match app.tokens.bootstrap_accepts(digest, admin, token, t) {
                Ok(true) => Ok(AdminAccess::Bootstrap),
                Ok(false) | Err(Error::NotFound { .. }) => Ok(AdminAccess::Refused),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// `POST ?action=rotate&profile=P` with an admin token: rotates P and shows the new token
/// once. The bootstrap secret may only issue the first admin token.
fn token_rotate(req: &Request, app: &App, profile: &str, t: u64) -> Response {
    let Some(token) = bearer(req) else {
        return unauthorized(req);
    };
    match admin_access(app, &token, t) {
        Ok(AdminAccess::Admin) => {}
        Ok(AdminAccess::Bootstrap) if profile == app.config.tokens.admin_profile => {
            tracing::warn!(
                "first admin token issued with tokens.bootstrap_sha256; the secret \
                 opens nothing any more, remove the line from the config"
            );
        }
        Ok(_) => return unauthorized(req),
        Err(e) => return token_error(req, &e),
    }
    match app.tokens.rotate(profile, t) {
        Ok(issued) => Response::json(
            200,
            Json::obj([
                ("ok", Json::Bool(true)),
                ("profile", Json::str(profile)),
                ("id", Json::str(issued.id)),
                ("token", Json::str(issued.secret)),
                ("expires_at", Json::Int(issued.expires_at as i64)),
                ("rotation", Json::Int(issued.rotation as i64)),
            ])
            .render(),
        ),
        Err(e) => token_error(req, &e),
    }
}

/// Messages one `do=list` answer lists, at most (the quarantine's default ceiling), and one
/// `do=requeue&id=all` moves: each move is a few writes and fsyncs, and a request must end
/// well inside the web server's timeout. The answers say when more are left.
const LIST_PER_REQUEST: usize = 1_000;
const REQUEUE_PER_REQUEST: usize = 200;

/// `?action=spool&do=…` with a live admin token: the `spool` command line's commands for an
/// operator without a shell (FTP-only hosting), over `curl`. `GET do=list[&folder=F]` and
/// `GET do=show&id=ID` read; `POST do=release|delete&id=ID` and `POST do=requeue&id=ID|all`
/// change, through the same delivery functions and locks as the command line. `retry` is
/// left out: a run over the whole spool could outlast the web server's timeout, and the
/// step after every visitor's answer does that work already. The bootstrap secret opens
/// nothing here: it is for the first token, not for messages.
fn token_spool(req: &Request, app: &App, t: u64) -> Response {
    use crate::delivery::Released;
    use crate::spool::{Folder, is_valid_id};
    let Some(token) = bearer(req) else {
        return unauthorized(req);
    };
    match admin_access(app, &token, t) {
        Ok(AdminAccess::Admin) => {}
        Ok(AdminAccess::Bootstrap | AdminAccess::Refused) => return unauthorized(req),
        Err(e) => return token_error(req, &e),
    }
    let command = req.query_param("do").unwrap_or_default();
    let allow = match command.as_str() {
        "list" | "show" => "GET",
        "release" | "delete" | "requeue" => "POST",
        _ => {
            return json_or_text(
                req,
                400,
                "bad_request",
                "unknown spool command (list, show, release, delete or requeue)",
            );
        }
    };
    if req.method() != allow {
        return json_or_text(
            req,
            405,
            "method_not_allowed",
            &format!("spool {command} takes {allow}"),
        )
        .header("Allow", allow);
    }
    let id = req.query_param("id").unwrap_or_default();
    if command != "list" && !(is_valid_id(&id) || (command == "requeue" && id == "all")) {
        return json_or_text(req, 400, "bad_request", "id is not a spool id");
    }
    let text = Response::text;
    let d = app.delivery();
    let done = match command.as_str() {
        "list" => {
            let name = req.query_param("folder").unwrap_or_else(|| "new".into());
            let Some(folder) = Folder::from_name(&name) else {
                return json_or_text(
                    req,
                    400,
                    "bad_request",
                    "folder is one of new, failed, sent, quarantine",
                );
            };
            let mut out = Vec::new();
            crate::admin::spool_list(app, folder, t, LIST_PER_REQUEST, &mut out)
                .map(|_| text(200, String::from_utf8_lossy(&out).into_owned()))
        }
        "show" => app.spool.find_text(&id).map(|found| match found {
            Some(message) => text(200, message),
            None => text(404, format!("no message {id}\n")),
        }),
        "requeue" => crate::delivery::requeue(&d, &id, t, REQUEUE_PER_REQUEST).map(|r| {
            let summary = format!("{}\n", crate::admin::requeue_summary(&r));
            match (id == "all", r.moved, r.busy, r.unreadable.is_empty()) {
                (true, ..) | (false, 1, ..) => text(200, summary),
                (false, _, 1, _) => text(503, summary).header("Retry-After", "1"),
                (false, _, _, false) => text(409, summary),
                _ => text(404, format!("no failed message {id}\n")),
            }
        }),
        release => {
            let done = if release == "release" {
                crate::delivery::release(&d, &id, t)
            } else {
                crate::delivery::delete_quarantined(&d, &id, t)
            };
            done.map(|r| match r {
                Released::Delivered => text(200, format!("released {id}: delivered\n")),
                Released::Queued => text(
                    202,
                    format!("released {id}: waiting in the spool, the next retry sends it\n"),
                ),
                Released::Deleted => text(200, format!("deleted {id}\n")),
                Released::NotFound => text(404, format!("no quarantined message {id}\n")),
                Released::Busy => {
                    text(503, format!("{id} is busy; try again\n")).header("Retry-After", "1")
                }
            })
        }
    };
    match done {
        Ok(resp) => {
            tracing::info!(command, id, status = resp.status, "spool command over HTTP");
            resp
        }
        Err(e) => token_error(req, &e),
    }
}

/// `GET ?action=check` with an admin token: the self-check report. Until the first admin
/// token exists, the bootstrap secret opens the report too, so an operator whose
/// first-token request fails can see why.
fn token_check(req: &Request, app: &App, t: u64) -> Response {
    let Some(token) = bearer(req) else {
        return unauthorized(req);
    };
    match admin_access(app, &token, t) {
        Ok(AdminAccess::Admin | AdminAccess::Bootstrap) => check_report(req),
        Ok(AdminAccess::Refused) => unauthorized(req),
        Err(e) => token_error(req, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    /// One error of every class the library has, each carrying a path, an OS error text and
    /// a config value that a visitor must never see.
    fn every_error() -> Vec<Error> {
        let path = Path::new("/srv/secret-root/var/tmp/ratelimit/.tmp-DYbJZj");
        vec![
            Error::ConfigMissing {
                path: path.to_path_buf(),
            },
            Error::config(path, "mail.smtp.password", "`hunter2-value` is not allowed"),
            Error::io(
                "write",
                path,
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ),
            Error::io(
                "rename onto",
                path,
                std::io::Error::from_raw_os_error(libc::EACCES),
            ),
            Error::Random(format!("getrandom failed at {}", path.display())),
            Error::Render(format!("font at {} unreadable", path.display())),
            Error::InvalidInput {
                what: "spool id",
                detail: format!("{} is not an id", path.display()),
            },
            Error::NotFound {
                what: "message",
                name: path.display().to_string(),
            },
        ]
    }

    fn request(json: bool) -> Request {
        let mut vars = HashMap::new();
        vars.insert("REQUEST_METHOD".to_string(), "GET".to_string());
        vars.insert("SCRIPT_NAME".to_string(), "/cgi-bin/captcha".to_string());
        if json {
            vars.insert("HTTP_ACCEPT".to_string(), "application/json".to_string());
        }
        Request::new(vars)
    }

    /// Issue 7, item 2: no error class shows a path, an OS error text or a config value,
    /// in HTML or in JSON, on any endpoint; each shows a reference instead.
    #[test]
    fn no_error_answer_shows_a_path_an_os_error_or_a_config_value() {
        for json in [false, true] {
            for (own, doing) in [
                ("captcha", Doing::Image),
                ("contact", Doing::Form),
                ("contact", Doing::Message),
            ] {
                let req = request(json);
                let ctx = ctx_for(&req, None, own);
                for e in every_error() {
                    let resp = error_response(&ctx, &e, None, doing);
                    let body = String::from_utf8_lossy(&resp.body).into_owned();
                    for secret in [
                        "/srv/secret-root",
                        "secret-root",
                        ".tmp-",
                        "os error",
                        "No space",
                        "Permission denied",
                        "hunter2",
                        "mail.smtp",
                    ] {
                        assert!(
                            !body.contains(secret),
                            "{own}/{doing:?}/json={json}: {e} leaked {secret:?}: {body}"
                        );
                    }
                    assert!(
                        body.contains("Reference for the site owner: "),
                        "{own}/{doing:?}: a reference ties the page to the log: {body}"
                    );
                    if doing == Doing::Image {
                        assert!(
                            !body.to_lowercase().contains("your message")
                                && !body.to_lowercase().contains("received"),
                            "an image request is not told about a message: {body}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn byte_ranges_are_the_ones_media_players_send() {
        assert_eq!(byte_range(Some("bytes=0-"), 100), Some((0, 99)));
        assert_eq!(byte_range(Some("bytes=0-1"), 100), Some((0, 1)));
        assert_eq!(byte_range(Some("bytes=90-200"), 100), Some((90, 99)));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Some((90, 99)));
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-",
        ] {
            assert_eq!(byte_range(Some(bad), 100), None, "{bad}");
        }
        assert_eq!(byte_range(None, 100), None);
    }

    #[test]
    fn a_lock_timeout_keeps_the_contract_text() {
        let req = request(false);
        let ctx = ctx_for(&req, None, "captcha");
        let e = Error::LockTimeout {
            key: "ratelimit_abc".into(),
            waited_ms: 300,
        };
        let resp = error_response(&ctx, &e, None, Doing::Image);
        assert_eq!(resp.status, 503);
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        assert!(
            body.contains("Lock-Timeout nach 300ms: ratelimit_abc"),
            "{body}"
        );
    }

    #[test]
    fn token_errors_show_no_path_either() {
        let req = request(true);
        for e in every_error() {
            let resp = token_error(&req, &e);
            let body = String::from_utf8_lossy(&resp.body).into_owned();
            if matches!(e, Error::InvalidInput { .. } | Error::NotFound { .. }) {
                // These echo what the caller itself sent, which here is a path-like name.
                continue;
            }
            for secret in ["secret-root", "os error", "hunter2", "mail.smtp"] {
                assert!(!body.contains(secret), "{e} leaked {secret:?}: {body}");
            }
            assert!(body.contains("reference "), "{body}");
        }
    }
}
