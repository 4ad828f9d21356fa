//! Mail: building the message for a spooled contact and handing it to the configured
//! transport (SMTP, sendmail, or a folder of `.eml` files). Recipients and `From` only ever
//! come from the config; the visitor's address goes into `Reply-To` only, after it passed
//! validation, and every header-bound text is checked again for line breaks here, so no
//! input can add a header or a recipient. This module never touches the spool: `delivery`
//! decides what happens to a message after a send.

use crate::spool;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

// The mail settings are defined here, next to what reads them; `config` fills them in
// from the `[mail]` section (so `config` depends on `mail`, never the other way round).

/// How and where mail goes.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// The fixed `From` address.
    pub from: String,
    /// Recipients; only ever from here, never from the visitor.
    pub to: Vec<String>,
    /// Put before the visitor's subject.
    pub subject_prefix: String,
    /// The transport.
    pub transport: Transport,
    /// Delivered messages to keep in `spool/sent/` (0 deletes them after delivery).
    pub keep_sent: usize,
    /// Delivery attempts before a message moves to `spool/failed/`.
    pub max_attempts: u32,
    /// Age after which an undelivered message moves to `spool/failed/`.
    pub max_age: Duration,
    /// First retry delay; it doubles with every failed attempt.
    pub retry_backoff: Duration,
    /// After a visitor's answer is complete, try one due spooled message (delivery for
    /// hosts without cron; see `delivery::retry_step`).
    pub retry_after_answer: bool,
    /// The host's outgoing quota per hour (`None`: no limit; see `quota`).
    pub max_per_hour: Option<u32>,
    /// The host's outgoing quota per day.
    pub max_per_day: Option<u32>,
}

/// A mail transport.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Write each message as an `.eml` file into a folder.
    File {
        /// The folder.
        dir: PathBuf,
    },
    /// Pipe each message to a sendmail-compatible program.
    Sendmail {
        /// The program.
        command: PathBuf,
        /// How long the program may run before it is killed (the message stays spooled).
        timeout: Duration,
    },
    /// Speak SMTP to a server.
    Smtp(SmtpConfig),
}

impl Transport {
    /// The file transport's folder, resolved against the runtime root (a relative `dir`
    /// is relative to it); `None` for the other transports.
    pub fn file_dir(&self, root: &Path) -> Option<PathBuf> {
        match self {
            Transport::File { dir } if dir.is_absolute() => Some(dir.clone()),
            Transport::File { dir } => Some(root.join(dir)),
            _ => None,
        }
    }
}

/// SMTP transport settings.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Server name (also used for the TLS certificate check).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// How the connection is secured.
    pub security: SmtpSecurity,
    /// AUTH user name, if any.
    pub username: Option<String>,
    /// AUTH password, if any.
    pub password: Option<String>,
    /// Extra CA certificate (PEM) to trust, e.g. for a private CA.
    pub ca_file: Option<PathBuf>,
    /// Connect/command timeout.
    pub timeout: Duration,
    /// Name sent in EHLO.
    pub hello_name: String,
}

/// SMTP connection security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// STARTTLS required.
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: allowed only towards a loopback address.
    Plain,
}

/// Why a send did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth retrying later (server down, 4xx, timeout, TLS trouble).
    Temporary(String),
    /// The server refused for good (5xx) or the message cannot be built.
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Temporary(m) => write!(f, "temporary: {m}"),
            SendError::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

/// Checks a configured mailbox (`addr@domain` or `Name <addr@domain>`).
pub fn check_mailbox(s: &str) -> Result<(), String> {
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains control characters"));
    }
    s.parse::<Mailbox>()
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not a mailbox: {e}"))
}

/// The domain part of a configured mailbox, for `Message-ID`s.
pub fn domain_of(mailbox: &str) -> String {
    mailbox
        .parse::<Mailbox>()
        .map(|m| m.email.domain().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// The visitor's `Reply-To` mailbox, or why it cannot be one. Called before a message is
/// saved, so a message that could never be built is refused up front.
pub fn reply_to(name: &str, email: &str) -> Result<Mailbox, String> {
    if name
        .chars()
        .chain(email.chars())
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err("control characters in a header field".into());
    }
    let address = email.parse().map_err(|e| format!("{e}"))?;
    Ok(Mailbox::new(Some(name.to_string()), address))
}

/// Builds the mail for a spooled message.
pub fn build(config: &MailConfig, msg: &spool::Message) -> Result<Message, SendError> {
    let bad = |what: &str, e: String| SendError::Permanent(format!("{what}: {e}"));
    let from: Mailbox = config
        .from
        .parse()
        .map_err(|e| bad("mail.from", format!("{e}")))?;
    let subject_text = if msg.subject.is_empty() {
        format!("Message from {}", msg.name)
    } else {
        msg.subject.clone()
    };
    let subject = format!("{}{}", config.subject_prefix, subject_text);
    if subject.chars().any(char::is_control) {
        return Err(bad("subject", "control characters".into()));
    }
    let mut b = Message::builder()
        .from(from)
        .reply_to(reply_to(&msg.name, &msg.email).map_err(|e| bad("reply-to", e))?)
        .subject(subject)
        .message_id(Some(msg.message_id.clone()))
        .date(UNIX_EPOCH + Duration::from_secs(msg.received_at));
    for to in &config.to {
        b = b.to(to.parse().map_err(|e| bad("mail.to", format!("{e}")))?);
    }
    let body = format!(
        "Name: {}\nE-mail: {}\nSubject: {}\nSpool id: {}\n\n{}\n",
        msg.name, msg.email, msg.subject, msg.id, msg.message
    );
    // lettre adds MIME-Version only to multipart or single-part builders; a plain body
    // needs it said, or some clients do not trust the charset (RFC 2045, section 4).
    b.header(lettre::message::header::MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| bad("message", e.to_string()))
}

fn smtp_transport(s: &SmtpConfig) -> Result<SmtpTransport, SendError> {
    let temp = |e: String| SendError::Temporary(e);
    let tls_params = || -> Result<TlsParameters, SendError> {
        let mut builder = TlsParameters::builder(s.host.clone());
        if let Some(ca) = &s.ca_file {
            let pem = crate::fsio::read(ca)
                .map_err(|e| temp(format!("mail.smtp.ca_file {}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| temp(format!("mail.smtp.ca_file {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build_rustls()
            .map_err(|e| temp(format!("TLS set-up: {e}")))
    };
    let tls = match s.security {
        SmtpSecurity::StartTls => Tls::Required(tls_params()?),
        SmtpSecurity::Tls => Tls::Wrapper(tls_params()?),
        SmtpSecurity::Plain => Tls::None,
    };
    let mut b = SmtpTransport::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(crate::deadline::clamp(s.timeout)))
        .hello_name(ClientId::Domain(s.hello_name.clone()));
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        b = b.credentials(Credentials::new(u.clone(), p.clone()));
    }
    Ok(b.build())
}

/// Sends `message` through the configured transport. `root` resolves a relative file
/// transport folder. `id` names the `.eml` file of the file transport.
pub fn send(
    config: &MailConfig,
    root: &Path,
    id: &str,
    message: &Message,
) -> Result<(), SendError> {
    match &config.transport {
        Transport::Smtp(s) => {
            let transport = smtp_transport(s)?;
            transport.send(message).map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    SendError::Permanent(e.to_string())
                } else {
                    SendError::Temporary(e.to_string())
                }
            })
        }
        Transport::Sendmail { command, timeout } => sendmail(command, *timeout, message),
        Transport::File { .. } => {
            let dir = config.transport.file_dir(root).unwrap_or_default();
            crate::fsio::create_dir_all(&dir)
                .map_err(|e| SendError::Temporary(format!("{}: {e}", dir.display())))?;
            // create_new: a retried delivery never overwrites (nor duplicates) a file.
            match crate::atomic::create_new(&dir.join(format!("{id}.eml")), &message.formatted()) {
                Ok(()) => Ok(()),
                Err(crate::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    Ok(())
                }
                Err(e) => Err(SendError::Temporary(e.to_string())),
            }
        }
    }
}

/// Pipes `message` to a sendmail-compatible `command` (`-i -f FROM -- TO…`, as lettre's
/// sendmail transport and PHP's `mail()` call it) and waits at most `timeout`, cut to what
/// is left of the request's deadline. A program that does not finish in time is killed
/// with its whole process group (a wrapper's children too), and the send counts as
/// temporary: the message stays in the spool for the next try. lettre's own sendmail
/// transport waits without any bound, which pinned a process (or a FastCGI thread) for as
/// long as a broken `sendmail` hung.
fn sendmail(command: &Path, timeout: Duration, message: &Message) -> Result<(), SendError> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let name = command.display();
    let envelope = message.envelope();
    let mut cmd = Command::new(command);
    cmd.arg("-i");
    if let Some(from) = envelope.from() {
        cmd.arg("-f").arg(from);
    }
    cmd.arg("--")
        .args(envelope.to().iter().map(ToString::to_string))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout can end everything it started.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| SendError::Temporary(format!("cannot start {name}: {e}")))?;
    let deadline = std::time::Instant::now() + crate::deadline::clamp(timeout);
    // Feeding stdin and draining stderr on threads of their own keeps a program that reads
    // nothing (or writes a lot) from blocking us past the deadline. They are not joined: a
    // grandchild that left the process group could keep a pipe open for ever, and the
    // answer must not wait for it.
    let text = message.formatted();
    if let Some(mut stdin) = child.stdin.take() {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&text);
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.take(4096).read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).trim().to_string());
        });
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let pgid = child.id() as libc::pid_t;
                // SAFETY: kill(2) has no memory effects; the group is our own child's.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                let _ = child.wait();
                break None;
            }
        }
    };
    let err_text = rx
        .recv_timeout(Duration::from_millis(100))
        .unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(SendError::Temporary(format!(
            "{name} exited with {st}: {err_text}"
        ))),
        None => Err(SendError::Temporary(format!(
            "{name} did not finish within {} ms and was killed",
            timeout.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MailConfig {
        MailConfig {
            from: "Site <noreply@example.org>".into(),
            to: vec!["owner@example.org".into()],
            subject_prefix: "[Contact] ".into(),
            transport: Transport::File { dir: "x".into() },
            keep_sent: 0,
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
            retry_backoff: Duration::from_secs(60),
            retry_after_answer: false,
            max_per_hour: None,
            max_per_day: None,
        }
    }

    fn message(name: &str, email: &str, subject: &str) -> spool::Message {
        spool::Message {
            id: "1-0123456789abcdef".into(),
            message_id: "<1-0123456789abcdef.formwarden@example.org>".into(),
            received_at: 1_700_000_000,
            name: name.into(),
            email: email.into(),
            subject: subject.into(),
            message: "Hello\nWorld äöü".into(),
            attempts: 0,
            next_attempt_at: 0,
            last_error: String::new(),
            requeued_at: 0,
            quarantined_for: Vec::new(),
        }
    }

    #[test]
    fn headers_come_from_config_and_the_visitor_only_in_reply_to() {
        let m = build(&config(), &message("Jürgen", "j@example.net", "Hi")).expect("built");
        let text = String::from_utf8_lossy(&m.formatted()).to_string();
        assert!(
            text.contains("From: Site <noreply@example.org>\r\n"),
            "{text}"
        );
        assert!(text.contains("To: owner@example.org\r\n"));
        assert!(
            text.contains("Reply-To: =?utf-8?b?SsO8cmdlbg==?= <j@example.net>\r\n"),
            "{text}"
        );
        assert!(text.contains("Subject: [Contact] Hi\r\n"));
        assert!(text.contains("Message-ID: <1-0123456789abcdef.formwarden@example.org>\r\n"));
        assert!(text.contains("Date: "));
        assert!(text.contains("MIME-Version: 1.0\r\n"), "{text}");
    }

    #[test]
    fn injection_never_reaches_a_header() {
        for (n, e, s) in [
            ("A\r\nBcc: x@y.z", "a@b.de", "s"),
            ("A", "a@b.de\nBcc: x@y.z", "s"),
            ("A", "a@b.de", "s\u{2028}Bcc: x"),
        ] {
            match build(&config(), &message(n, e, s)) {
                Err(SendError::Permanent(_)) => {}
                Ok(m) => {
                    let text = String::from_utf8_lossy(&m.formatted()).to_string();
                    assert!(!text.contains("\r\nBcc:"), "{text}");
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(reply_to("A\nB", "a@b.de").is_err());
        assert!(check_mailbox("x@y.z\r\nBcc: q@r.s").is_err());
    }
}
