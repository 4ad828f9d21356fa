//! The pages and JSON answers a visitor sees, in English and German. Every error page for
//! the contact form shows the form again with a fresh CAPTCHA and the visitor's input (so
//! nothing typed is lost), and status messages sit in an ARIA live region so that screen
//! readers announce them. Everything interpolated into HTML goes through [`escape`]. This
//! module never decides what happened; the endpoints tell it.

use crate::cgi::{Request, Response};
use crate::config::Language;
use crate::form::{FieldError, Fields, Problem};
use crate::json::Json;

/// The field and value of the no-script "Show a new image" button: the page writes it,
/// the contact endpoint recognises it.
pub const NEW_IMAGE_ACTION: (&str, &str) = ("fw_action", "new_image");

/// The language of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// German.
    De,
}

impl Lang {
    /// Picks the language: fixed by config, or the first of `de`/`en` in `Accept-Language`.
    pub fn choose(config: Language, req: &Request) -> Lang {
        match config {
            Language::En => Lang::En,
            Language::De => Lang::De,
            Language::Auto => {
                // A page may ask for its language explicitly (`?lang=de`), so the German
                // example page gets German answers in an English browser, without script.
                if let Some(lang) = req.query_param("lang").as_deref().and_then(Lang::from_code) {
                    return lang;
                }
                let header = req.header("accept-language").unwrap_or("");
                let mut best: Option<(f32, Lang)> = None;
                for part in header.split(',') {
                    let mut it = part.split(';');
                    let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
                    let q = it
                        .find_map(|p| p.trim().strip_prefix("q="))
                        .and_then(|q| q.parse::<f32>().ok())
                        .unwrap_or(1.0);
                    let lang = if tag.starts_with("de") {
                        Lang::De
                    } else if tag.starts_with("en") {
                        Lang::En
                    } else {
                        continue;
                    };
                    if best.is_none_or(|(bq, _)| q > bq) {
                        best = Some((q, lang));
                    }
                }
                best.map_or(Lang::En, |(_, l)| l)
            }
        }
    }

    /// The language of code `en` or `de`; `None` for any other.
    pub fn from_code(code: &str) -> Option<Lang> {
        match code {
            "en" => Some(Lang::En),
            "de" => Some(Lang::De),
            _ => None,
        }
    }

    /// The language code (`en`, `de`).
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
        }
    }
}

/// Message keys; [`text`] gives the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Form heading.
    Title,
    /// Success heading.
    SentTitle,
    /// Success text.
    SentText,
    /// Saved but not yet delivered.
    QueuedText,
    /// Saving failed: nothing received.
    NotReceived,
    /// Generic error heading.
    ErrorTitle,
    /// Fix the fields.
    FixFields,
    /// Wrong CAPTCHA answer.
    CaptchaWrong,
    /// CAPTCHA expired, used or unknown.
    CaptchaStale,
    /// Too many requests.
    RateLimited,
    /// Busy, try again.
    Busy,
    /// Broken installation or server fault (the form endpoint).
    ServerError,
    /// Heading of an error page that is not about a message (the image endpoint).
    UnavailableTitle,
    /// The security image cannot be made right now (temporary).
    ImageBusy,
    /// The security image cannot be made (server fault).
    ImageFailed,
    /// Label of the reference that ties a page to the operator's log line.
    Reference,
    /// Bad request.
    BadRequest,
    /// Body too large.
    TooLarge,
    /// Wrong method.
    WrongMethod,
    /// Wrong content type.
    WrongType,
    /// Labels.
    Name,
    /// Label.
    Email,
    /// Label.
    Subject,
    /// Label.
    Message,
    /// Label.
    Captcha,
    /// Image alt text.
    CaptchaAlt,
    /// New image link.
    NewImage,
    /// Submit button.
    Send,
    /// Back link.
    Back,
    /// Field problems.
    Missing,
    /// Field problem.
    TooLong,
    /// Field problem.
    LineBreak,
    /// Field problem.
    Control,
    /// Field problem.
    BadEmail,
    /// The time trap: sent sooner than a person fills the form.
    TooSoon,
    /// A refusing content rule: too many links.
    RejectLinks,
    /// A refusing content rule: the name looks random.
    RejectName,
    /// A refusing content rule: the message repeats another field.
    RejectRepeated,
    /// A refusing content rule: a word of the site's list.
    RejectWord,
    /// A refusing content rule: a domain of the site's list.
    RejectDomain,
    /// The challenge for a recording is used, expired or unknown.
    AudioUnavailable,
    /// Label of the recording player.
    Listen,
    /// Text of the link for browsers without an audio player.
    ListenLink,
    /// Hint before the "new image" button.
    CannotRead,
    /// `spam.challenge = "image+pow"` without the script's work.
    NeedsScript,
}

/// The wording of `m` in `lang`.
pub fn text(lang: Lang, m: Msg) -> &'static str {
    use Msg::*;
    match (lang, m) {
        (Lang::En, Title) => "Contact",
        (Lang::De, Title) => "Kontakt",
        (Lang::En, SentTitle) => "Thank you",
        (Lang::De, SentTitle) => "Vielen Dank",
        (Lang::En, SentText) => "Your message has been sent.",
        (Lang::De, SentText) => "Ihre Nachricht wurde gesendet.",
        (Lang::En, QueuedText) => {
            "Your message has been received and saved. It will be delivered shortly; you do not need to send it again."
        }
        (Lang::De, QueuedText) => {
            "Ihre Nachricht ist angekommen und gespeichert. Sie wird in Kürze zugestellt; Sie müssen sie nicht erneut senden."
        }
        (Lang::En, NotReceived) => {
            "Your message was NOT received: the server could not save it. Please try again in a few minutes."
        }
        (Lang::De, NotReceived) => {
            "Ihre Nachricht wurde NICHT empfangen: der Server konnte sie nicht speichern. Bitte versuchen Sie es in einigen Minuten erneut."
        }
        (Lang::En, ErrorTitle) => "Your message was not sent",
        (Lang::De, ErrorTitle) => "Ihre Nachricht wurde nicht gesendet",
        (Lang::En, FixFields) => "Please correct the marked fields.",
        (Lang::De, FixFields) => "Bitte korrigieren Sie die markierten Felder.",
        (Lang::En, CaptchaWrong) => {
            "The characters from the image did not match. Please try the new image."
        }
        (Lang::De, CaptchaWrong) => {
            "Die Zeichen aus dem Bild stimmten nicht. Bitte versuchen Sie es mit dem neuen Bild."
        }
        (Lang::En, CaptchaStale) => {
            "The security image has expired or was already used. Please enter the characters from the new image."
        }
        (Lang::De, CaptchaStale) => {
            "Das Sicherheitsbild ist abgelaufen oder wurde schon benutzt. Bitte geben Sie die Zeichen aus dem neuen Bild ein."
        }
        (Lang::En, RateLimited) => {
            "Too many requests from your network. Please wait a while and try again."
        }
        (Lang::De, RateLimited) => {
            "Zu viele Anfragen aus Ihrem Netz. Bitte warten Sie eine Weile und versuchen Sie es erneut."
        }
        (Lang::En, Busy) => "The server is busy. Please try again in a moment.",
        (Lang::De, Busy) => {
            "Der Server ist ausgelastet. Bitte versuchen Sie es gleich noch einmal."
        }
        (Lang::En, ServerError) => {
            "The contact form is not available right now because of a problem on the server. The site owner finds the reason in the server log."
        }
        (Lang::De, ServerError) => {
            "Das Kontaktformular ist wegen eines Problems auf dem Server gerade nicht verfügbar. Der Betreiber findet den Grund im Server-Log."
        }
        (Lang::En, UnavailableTitle) => "Temporarily unavailable",
        (Lang::De, UnavailableTitle) => "Vorübergehend nicht verfügbar",
        (Lang::En, ImageBusy) => {
            "The security image cannot be made right now. Please try again in a moment."
        }
        (Lang::De, ImageBusy) => {
            "Das Sicherheitsbild kann gerade nicht erstellt werden. Bitte versuchen Sie es gleich noch einmal."
        }
        (Lang::En, ImageFailed) => {
            "The security image cannot be made because of a problem on the server. The site owner finds the reason in the server log."
        }
        (Lang::De, ImageFailed) => {
            "Das Sicherheitsbild kann wegen eines Problems auf dem Server nicht erstellt werden. Der Betreiber findet den Grund im Server-Log."
        }
        (Lang::En, Reference) => "Reference for the site owner",
        (Lang::De, Reference) => "Referenz für den Betreiber",
        (Lang::En, BadRequest) => "The form data could not be read.",
        (Lang::De, BadRequest) => "Die Formulardaten konnten nicht gelesen werden.",
        (Lang::En, TooLarge) => "The message is too large.",
        (Lang::De, TooLarge) => "Die Nachricht ist zu groß.",
        (Lang::En, WrongMethod) => "This address does not accept that kind of request.",
        (Lang::De, WrongMethod) => "Diese Adresse nimmt diese Art von Anfrage nicht an.",
        (Lang::En, WrongType) => "The form must be sent as application/x-www-form-urlencoded.",
        (Lang::De, WrongType) => {
            "Das Formular muss als application/x-www-form-urlencoded gesendet werden."
        }
        (Lang::En, Name) => "Name",
        (Lang::De, Name) => "Name",
        (Lang::En, Email) => "E-mail address",
        (Lang::De, Email) => "E-Mail-Adresse",
        (Lang::En, Subject) => "Subject",
        (Lang::De, Subject) => "Betreff",
        (Lang::En, Message) => "Message",
        (Lang::De, Message) => "Nachricht",
        (Lang::En, Captcha) => "Characters from the image",
        (Lang::De, Captcha) => "Zeichen aus dem Bild",
        (Lang::En, CaptchaAlt) => {
            "Security image: distorted letters and digits to type into the field below"
        }
        (Lang::De, CaptchaAlt) => {
            "Sicherheitsbild: verzerrte Buchstaben und Ziffern zum Abtippen in das Feld darunter"
        }
        (Lang::En, NewImage) => "Show a new image",
        (Lang::De, NewImage) => "Neues Bild anzeigen",
        (Lang::En, Send) => "Send",
        (Lang::De, Send) => "Senden",
        (Lang::En, Back) => "Back to the form",
        (Lang::De, Back) => "Zurück zum Formular",
        (Lang::En, Missing) => "is required",
        (Lang::De, Missing) => "fehlt",
        (Lang::En, TooLong) => "is too long",
        (Lang::De, TooLong) => "ist zu lang",
        (Lang::En, LineBreak) => "must not contain line breaks",
        (Lang::De, LineBreak) => "darf keine Zeilenumbrüche enthalten",
        (Lang::En, Control) => "contains characters that are not allowed",
        (Lang::De, Control) => "enthält unzulässige Zeichen",
        (Lang::En, BadEmail) => "is not a valid e-mail address",
        (Lang::De, BadEmail) => "ist keine gültige E-Mail-Adresse",
        (Lang::En, TooSoon) => {
            "That was very quick. Please check your message and the characters from the image, then send it again."
        }
        (Lang::De, TooSoon) => {
            "Das ging sehr schnell. Bitte prüfen Sie Ihre Nachricht und die Zeichen aus dem Bild und senden Sie sie dann noch einmal."
        }
        (Lang::En, RejectLinks) => {
            "Your message contains too many links. Please remove some and send it again."
        }
        (Lang::De, RejectLinks) => {
            "Ihre Nachricht enthält zu viele Links. Bitte entfernen Sie einige und senden Sie sie noch einmal."
        }
        (Lang::En, RejectName) => "Please enter your name as you would sign a letter.",
        (Lang::De, RejectName) => {
            "Bitte geben Sie Ihren Namen so ein, wie Sie einen Brief unterschreiben."
        }
        (Lang::En, RejectRepeated) => "Please write your message into the message field.",
        (Lang::De, RejectRepeated) => "Bitte schreiben Sie Ihre Nachricht in das Nachrichtenfeld.",
        (Lang::En, RejectWord) => {
            "Your message contains words this site does not accept. Please rephrase it."
        }
        (Lang::De, RejectWord) => {
            "Ihre Nachricht enthält Wörter, die diese Website nicht annimmt. Bitte formulieren Sie sie um."
        }
        (Lang::En, RejectDomain) => {
            "This site does not accept messages with links to, or addresses at, one of the domains you used."
        }
        (Lang::De, RejectDomain) => {
            "Diese Website nimmt keine Nachrichten mit Links zu oder Adressen bei einer der verwendeten Domains an."
        }
        (Lang::En, AudioUnavailable) => {
            "These characters have expired or were already used. Choose “Show a new image” for new ones."
        }
        (Lang::De, AudioUnavailable) => {
            "Diese Zeichen sind abgelaufen oder wurden schon benutzt. Wählen Sie „Neues Bild anzeigen“ für neue."
        }
        (Lang::En, Listen) => "Listen to the characters instead",
        (Lang::De, Listen) => "Die Zeichen stattdessen anhören",
        (Lang::En, ListenLink) => "Listen to the characters (WAV recording)",
        (Lang::De, ListenLink) => "Die Zeichen anhören (WAV-Aufnahme)",
        (Lang::En, CannotRead) => "Cannot read or hear the characters?",
        (Lang::De, CannotRead) => "Zeichen nicht lesbar oder hörbar?",
        (Lang::En, NeedsScript) => {
            "This form needs JavaScript for its security check. Please turn it on for this site and send the form again."
        }
        (Lang::De, NeedsScript) => {
            "Dieses Formular braucht JavaScript für seine Sicherheitsprüfung. Bitte schalten Sie es für diese Website ein und senden Sie das Formular erneut."
        }
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Everything a page needs to know about where it is.
#[derive(Debug, Clone)]
pub struct PageCtx {
    /// Language.
    pub lang: Lang,
    /// Site name for titles.
    pub site_name: String,
    /// URL of the contact endpoint (form action).
    pub contact_url: String,
    /// URL of the CAPTCHA endpoint.
    pub captcha_url: String,
    /// Answer in JSON.
    pub json: bool,
    /// Answer errors as a picture (the request came from an `<img>`).
    pub image: bool,
    /// The site's stylesheet for the built-in pages.
    pub stylesheet: Option<String>,
    /// Where operator templates may live (`var/config/`), if the runtime tree is known.
    pub template_dir: Option<std::path::PathBuf>,
    /// Heading of an error page without a form: about the message on the contact
    /// endpoint, about the image on the CAPTCHA endpoint.
    pub error_title: Msg,
}

/// The operator's page template for `lang`: `templates/page.{lang}.html`, else
/// `templates/page.html` under the config folder. A template must contain `{{main}}`; it
/// may use `{{lang}}`, `{{title}}` and `{{site}}` (all inserted HTML-escaped except main).
/// A template without `{{main}}` is ignored with a warning, so a broken upload cannot
/// swallow every page.
fn operator_template(ctx: &PageCtx) -> Option<String> {
    let dir = ctx.template_dir.as_ref()?.join("templates");
    for name in [
        format!("page.{}.html", ctx.lang.code()),
        "page.html".to_string(),
    ] {
        let path = dir.join(&name);
        let Ok(text) = crate::fsio::read_to_string(&path) else {
            continue;
        };
        if text.contains("{{main}}") {
            return Some(text);
        }
        tracing::warn!(path = %path.display(), "page template has no {{main}} placeholder: using the built-in page");
        return None;
    }
    None
}

fn problem_msg(p: Problem) -> Msg {
    match p {
        Problem::Missing => Msg::Missing,
        Problem::TooLong(_) => Msg::TooLong,
        Problem::LineBreak => Msg::LineBreak,
        Problem::Control => Msg::Control,
        Problem::BadEmail => Msg::BadEmail,
    }
}

fn field_label(lang: Lang, field: &str) -> &'static str {
    match field {
        "name" => text(lang, Msg::Name),
        "email" => text(lang, Msg::Email),
        "subject" => text(lang, Msg::Subject),
        "captcha" => text(lang, Msg::Captcha),
        _ => text(lang, Msg::Message),
    }
}

fn shell(ctx: &PageCtx, title: &str, main: &str) -> String {
    if let Some(t) = operator_template(ctx) {
        // `main` goes last so that text inside it which looks like a placeholder stays text.
        return t
            .replace("{{lang}}", ctx.lang.code())
            .replace("{{title}}", &escape(title))
            .replace("{{site}}", &escape(&ctx.site_name))
            .replace("{{main}}", main);
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title} – {site}</title>\n{sheet}<style>body{{font:1rem/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}label{{display:block;margin-top:1rem;font-weight:600}}input,textarea{{width:100%;box-sizing:border-box;padding:.4rem;font:inherit}}.err{{color:#a00}}[aria-invalid=true]{{border:2px solid #a00}}button{{margin-top:1rem;padding:.5rem 1.5rem;font:inherit}}</style>\n</head>\n<body>\n<main>\n<h1>{title}</h1>\n{main}\n</main>\n</body>\n</html>\n",
        lang = ctx.lang.code(),
        title = escape(title),
        site = escape(&ctx.site_name),
        sheet = ctx
            .stylesheet
            .as_ref()
            .map_or_else(String::new, |url| format!(
                "<link rel=\"stylesheet\" href=\"{}\">\n",
                escape(url)
            )),
    )
}

/// The honeypot (`screen::HONEYPOT_FIELD`): off-screen rather than `display:none` (which
/// some bots skip), hidden from screen readers, out of the tab order, and marked so that
/// browsers and password managers (LastPass, 1Password, Bitwarden, Dashlane) do not fill
/// it. The same markup is in deploy/site/*.html; a test keeps them equal.
pub const HONEYPOT_HTML: &str = "<div class=\"fw-trap\" aria-hidden=\"true\" style=\"position:absolute;left:-10000px;top:auto;width:1px;height:1px;overflow:hidden\"><label for=\"f-fw-trap\">Leave this field empty</label><input id=\"f-fw-trap\" name=\"fw_trap\" type=\"text\" value=\"\" tabindex=\"-1\" autocomplete=\"off\" data-lpignore=\"true\" data-1p-ignore=\"true\" data-bwignore=\"true\" data-form-type=\"other\"></div>\n";

/// The contact form with status messages, field errors and the visitor's input.
pub fn form_html(
    ctx: &PageCtx,
    messages: &[&str],
    errors: &[FieldError],
    values: &Fields,
) -> String {
    let l = ctx.lang;
    let mut main = String::new();
    main.push_str("<div role=\"alert\" aria-live=\"assertive\">");
    for m in messages {
        main.push_str(&format!("<p class=\"err\">{}</p>", escape(m)));
    }
    if !errors.is_empty() {
        main.push_str("<ul class=\"err\">");
        for e in errors {
            main.push_str(&format!(
                "<li><a href=\"#f-{f}\">{label}</a> {what}</li>",
                f = e.field,
                label = escape(field_label(l, e.field)),
                what = escape(text(l, problem_msg(e.problem))),
            ));
        }
        main.push_str("</ul>");
    }
    main.push_str("</div>\n");
    main.push_str(&format!(
        "<form method=\"post\" action=\"{}\">\n",
        escape(&ctx.contact_url)
    ));
    let val = |k: &str| escape(values.get(k).map_or("", String::as_str));
    let invalid = |k: &str| {
        if errors.iter().any(|e| e.field == k) {
            " aria-invalid=\"true\""
        } else {
            ""
        }
    };
    for (field, msg, kind, max, req) in [
        ("name", Msg::Name, "text", crate::form::MAX_NAME, true),
        ("email", Msg::Email, "email", crate::form::MAX_EMAIL, true),
        (
            "subject",
            Msg::Subject,
            "text",
            crate::form::MAX_SUBJECT,
            false,
        ),
    ] {
        main.push_str(&format!(
            "<label for=\"f-{field}\">{label}</label><input id=\"f-{field}\" name=\"{field}\" type=\"{kind}\" maxlength=\"{max}\" value=\"{v}\"{req}{inv}>\n",
            label = escape(text(l, msg)),
            v = val(field),
            req = if req { " required" } else { "" },
            inv = invalid(field),
        ));
    }
    main.push_str(&format!(
        "<label for=\"f-message\">{label}</label><textarea id=\"f-message\" name=\"message\" rows=\"8\" maxlength=\"{max}\" required{inv}>{v}</textarea>\n",
        label = escape(text(l, Msg::Message)),
        max = crate::form::MAX_MESSAGE,
        v = val("message"),
        inv = invalid("message"),
    ));
    main.push_str(HONEYPOT_HTML);
    // The recording is fetched only when played (preload none): each challenge has one,
    // and a page view must not spend it. "Show a new image" posts the form back, so that
    // nothing typed is lost; it comes after "Send", which must stay the button that Enter
    // presses.
    let audio = format!("{}?audio=1&lang={}", ctx.captcha_url, l.code());
    main.push_str(&format!(
        "<p class=\"captcha\"><img src=\"{src}\" width=\"{w}\" height=\"{h}\" alt=\"{alt}\"></p>\n<p class=\"captcha-audio\"><audio controls preload=\"none\" src=\"{audio}\" aria-label=\"{listen}\"><a href=\"{audio}\">{listen_link}</a></audio></p>\n<label for=\"f-captcha\">{label}</label><input id=\"f-captcha\" name=\"captcha\" type=\"text\" autocomplete=\"off\" autocapitalize=\"characters\" spellcheck=\"false\" required{inv}>\n<button type=\"submit\">{send}</button>\n<p class=\"new-image\">{cannot} <button type=\"submit\" name=\"{action}\" value=\"{action_value}\" formnovalidate>{new}</button></p>\n</form>\n",
        src = escape(&ctx.captcha_url),
        w = crate::captcha_image::WIDTH,
        h = crate::captcha_image::HEIGHT,
        alt = escape(text(l, Msg::CaptchaAlt)),
        audio = escape(&audio),
        listen = escape(text(l, Msg::Listen)),
        listen_link = escape(text(l, Msg::ListenLink)),
        cannot = escape(text(l, Msg::CannotRead)),
        action = NEW_IMAGE_ACTION.0,
        action_value = NEW_IMAGE_ACTION.1,
        new = escape(text(l, Msg::NewImage)),
        label = escape(text(l, Msg::Captcha)),
        inv = invalid("captcha"),
        send = escape(text(l, Msg::Send)),
    ));
    let title = if messages.is_empty() && errors.is_empty() {
        Msg::Title
    } else {
        Msg::ErrorTitle
    };
    shell(ctx, text(l, title), &main)
}

/// A plain page with a heading, a paragraph and a link back to the form.
pub fn message_html(ctx: &PageCtx, title: Msg, body: &str) -> String {
    let main = format!(
        "<div role=\"status\" aria-live=\"polite\"><p>{}</p></div>\n<p><a href=\"{}\">{}</a></p>",
        escape(body),
        escape(&ctx.contact_url),
        escape(text(ctx.lang, Msg::Back)),
    );
    shell(ctx, text(ctx.lang, title), &main)
}

/// A JSON error answer: machine-readable code, human message, field problems and where to
/// get a fresh CAPTCHA.
pub fn error_json(
    ctx: &PageCtx,
    code: &str,
    message: &str,
    errors: &[FieldError],
    detail: Option<&str>,
) -> String {
    let fields = Json::Obj(
        errors
            .iter()
            .map(|e| {
                (
                    e.field.to_string(),
                    Json::str(format!(
                        "{} {}",
                        field_label(ctx.lang, e.field),
                        text(ctx.lang, problem_msg(e.problem))
                    )),
                )
            })
            .collect(),
    );
    Json::obj([
        ("ok", Json::Bool(false)),
        ("error", Json::str(code)),
        ("message", Json::str(message)),
        ("fields", fields),
        ("captcha", Json::str(ctx.captcha_url.clone())),
        ("detail", detail.map_or(Json::Null, Json::str)),
    ])
    .render()
}

/// An error answer in the form the client wants: HTML page (with the form again when
/// `form` is given) or JSON.
pub fn error(
    ctx: &PageCtx,
    status: u16,
    code: &str,
    msg: &str,
    errors: &[FieldError],
    form: Option<&Fields>,
    detail: Option<&str>,
) -> Response {
    if ctx.json {
        return Response::json(status, error_json(ctx, code, msg, errors, detail));
    }
    if ctx.image {
        return Response::bytes(status, "image/svg+xml", error_svg(msg).into_bytes());
    }
    let page = match form {
        Some(values) => {
            let mut lines = vec![msg];
            if let Some(d) = detail {
                lines.push(d);
            }
            form_html(ctx, &lines, errors, values)
        }
        None => {
            let body = match detail {
                Some(d) => format!("{msg} ({d})"),
                None => msg.to_string(),
            };
            message_html(ctx, ctx.error_title, &body)
        }
    };
    Response::html(status, page)
}

/// A picture the size of the CAPTCHA image that shows `msg`, for an `<img>` whose request
/// failed: the visitor reads why instead of seeing a broken image.
pub fn error_svg(msg: &str) -> String {
    // Wrapped by words into lines of about 34 characters; four lines fit the frame.
    let mut lines: Vec<String> = vec![String::new()];
    for word in msg.split_whitespace() {
        let last = lines.last_mut().map_or(0, |l| l.chars().count());
        if last > 0 && last + 1 + word.chars().count() > 34 {
            lines.push(String::new());
        }
        if let Some(l) = lines.last_mut() {
            if !l.is_empty() {
                l.push(' ');
            }
            l.push_str(word);
        }
    }
    lines.truncate(4);
    let (w, h) = (crate::captcha_image::WIDTH, crate::captcha_image::HEIGHT);
    let text: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("<text x=\"6\" y=\"{}\">{}</text>", 16 + i * 15, escape(l)))
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{label}\"><rect width=\"100%\" height=\"100%\" fill=\"#fff3f3\" stroke=\"#a00\"/><g font-family=\"sans-serif\" font-size=\"11\" fill=\"#600\">{text}</g></svg>\n",
        label = escape(msg),
    )
}
