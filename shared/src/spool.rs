//! The mail spool: every accepted contact message is saved here, atomically and durably,
//! before anything tries to send it, so that no accepted message can be lost. Layout
//! (maildir-like): `var/spool/new/` holds messages waiting for delivery, `failed/` those
//! that gave up after the configured attempts or age, `sent/` an optional bounded archive,
//! `quarantine/` suspected spam that is never sent unless the operator releases it.
//! A message is changed or moved only while its lock `spool_{id}` is held; that lock is
//! what keeps two senders (a POST and a retry run, or two retry runs) from delivering one
//! message twice. This module never talks to a mail server: `mail` does.

use crate::atomic;
use crate::error::{Error, Result};
use crate::form::Contact;
use crate::state::{self, Validate};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One spooled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Spool id, also the file stem: `{received_at}-{random hex}`.
    pub id: String,
    /// The `Message-ID` header, fixed at receipt so a retried send is the same message.
    pub message_id: String,
    /// Unix time of receipt (also the `Date` header).
    pub received_at: u64,
    /// Sender's name.
    pub name: String,
    /// Sender's address (`Reply-To`).
    pub email: String,
    /// Subject as entered.
    pub subject: String,
    /// Message text.
    pub message: String,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not before this Unix time (backoff).
    #[serde(default)]
    pub next_attempt_at: u64,
    /// The last delivery error, for the operator.
    #[serde(default)]
    pub last_error: String,
    /// Unix time of the last requeue from `failed/` (0: never); the age limit counts from
    /// the later of this and `received_at`.
    #[serde(default)]
    pub requeued_at: u64,
    /// Why it was quarantined (rule names, see `screen::Rule::name`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined_for: Vec<String>,
}

impl Validate for Message {
    fn validate(&self, now: u64) -> std::result::Result<(), String> {
        if !is_valid_id(&self.id) {
            return Err(format!("bad spool id {:?}", self.id));
        }
        if self.received_at > now + state::CLOCK_SLACK {
            return Err("received in the future".into());
        }
        let fields = [
            ("name", &self.name),
            ("email", &self.email),
            ("subject", &self.subject),
        ];
        for (name, v) in fields {
            if v.chars().any(char::is_control) {
                return Err(format!("{name} holds control characters"));
            }
        }
        Ok(())
    }
}

/// True for ids of the form we create.
pub fn is_valid_id(id: &str) -> bool {
    let Some((ts, rand)) = id.split_once('-') else {
        return false;
    };
    !ts.is_empty()
        && ts.len() <= 20
        && ts.bytes().all(|b| b.is_ascii_digit())
        && rand.len() == 16
        && rand.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Which spool folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// Waiting for delivery.
    New,
    /// Gave up.
    Failed,
    /// Delivered (kept only if configured).
    Sent,
    /// Suspected spam: kept, never sent unless released.
    Quarantine,
}

impl Folder {
    /// The folder an operator names (`new`, `failed`, `sent`, `quarantine`); `None` for
    /// any other name, so that no name leads out of the spool.
    pub fn from_name(name: &str) -> Option<Folder> {
        [
            Folder::New,
            Folder::Failed,
            Folder::Sent,
            Folder::Quarantine,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Folder::New => "new",
            Folder::Failed => "failed",
            Folder::Sent => "sent",
            Folder::Quarantine => "quarantine",
        }
    }
}

/// The spool under one runtime tree.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// A spool rooted at `dir` (`var/spool`).
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool { dir: dir.into() }
    }

    /// The folder path.
    pub fn folder(&self, f: Folder) -> PathBuf {
        self.dir.join(f.name())
    }

    /// The file of message `id` in folder `f`.
    pub fn path(&self, f: Folder, id: &str) -> PathBuf {
        self.folder(f).join(format!("{id}.toml"))
    }

    /// Saves a new message durably into `new/`. Unique names and create-only writes mean
    /// no message can overwrite another.
    pub fn save(&self, contact: &Contact, now: u64, mail_domain: &str) -> Result<Message> {
        self.save_into(Folder::New, contact, now, mail_domain, Vec::new())
    }

    /// Saves a suspected message durably into `quarantine/`, with the rules it matched.
    /// Refused with [`Error::Full`] when `ceiling` messages wait there already: a flood of
    /// suspects must not fill the disk, and refusing (the sender sees a 503) loses nothing
    /// silently.
    pub fn save_quarantined(
        &self,
        contact: &Contact,
        now: u64,
        mail_domain: &str,
        reasons: Vec<String>,
        ceiling: usize,
    ) -> Result<Message> {
        let held = crate::state::list(&self.folder(Folder::Quarantine), ".toml")?.len();
        if held >= ceiling {
            return Err(Error::Full {
                what: "quarantined messages",
                limit: ceiling,
            });
        }
        let msg = self.save_into(Folder::Quarantine, contact, now, mail_domain, reasons)?;
        tracing::warn!(id = %msg.id, reasons = ?msg.quarantined_for, "message quarantined");
        Ok(msg)
    }

    fn save_into(
        &self,
        folder: Folder,
        contact: &Contact,
        now: u64,
        mail_domain: &str,
        quarantined_for: Vec<String>,
    ) -> Result<Message> {
        let id = format!(
            "{now}-{}",
            crate::random::hex(&crate::random::bytes::<8>()?)
        );
        let msg = Message {
            message_id: format!("<{id}.formwarden@{mail_domain}>"),
            id,
            received_at: now,
            name: contact.name.clone(),
            email: contact.email.clone(),
            subject: contact.subject.clone(),
            message: contact.message.clone(),
            attempts: 0,
            next_attempt_at: now,
            last_error: String::new(),
            requeued_at: 0,
            quarantined_for,
        };
        state::create(&self.path(folder, &msg.id), &msg)?;
        tracing::info!(id = %msg.id, "message spooled");
        Ok(msg)
    }

    /// Reads a message; `None` when it is gone (delivered by someone else meanwhile).
    pub fn load(
        &self,
        f: Folder,
        id: &str,
        now: u64,
    ) -> Result<Option<std::result::Result<Message, String>>> {
        let path = self.path(f, id);
        Ok(match state::read::<Message>(&path, now)? {
            state::Loaded::Missing => None,
            state::Loaded::Valid(m) => Some(Ok(m)),
            state::Loaded::Invalid(reason) => Some(Err(reason)),
        })
    }

    /// A message as stored, from whichever folder holds it, for the operator to read.
    /// `None` when no folder has it (or the id is not one we create).
    pub fn find_text(&self, id: &str) -> Result<Option<String>> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        for f in [
            Folder::New,
            Folder::Failed,
            Folder::Sent,
            Folder::Quarantine,
        ] {
            let path = self.path(f, id);
            match crate::fsio::read_to_string(&path) {
                Ok(text) => return Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("read", &path, e)),
            }
        }
        Ok(None)
    }

    /// Rewrites a message in place (attempt counters).
    pub fn update(&self, f: Folder, msg: &Message) -> Result<()> {
        state::write(&self.path(f, &msg.id), msg)
    }

    /// Moves a message between folders.
    pub fn move_to(&self, id: &str, from: Folder, to: Folder) -> Result<()> {
        atomic::rename(&self.path(from, id), &self.path(to, id))
    }

    /// Removes a message from a folder.
    pub fn remove(&self, f: Folder, id: &str) -> Result<()> {
        atomic::remove(&self.path(f, id))
    }

    /// Ids in folder `f`, oldest first.
    pub fn ids(&self, f: Folder) -> Result<Vec<String>> {
        let mut ids: Vec<String> = crate::state::list(&self.folder(f), ".toml")?
            .into_iter()
            .map(|l| l.stem)
            .filter(|id| is_valid_id(id))
            .collect();
        ids.sort_by_key(|id| {
            (
                id.split('-').next().and_then(|t| t.parse::<u64>().ok()),
                id.clone(),
            )
        });
        Ok(ids)
    }

    /// Keeps only the newest `keep` messages in `sent/`.
    pub fn trim_sent(&self, keep: usize) -> Result<()> {
        let ids = self.ids(Folder::Sent)?;
        let excess = ids.len().saturating_sub(keep);
        for id in &ids[..excess] {
            self.remove(Folder::Sent, id)?;
        }
        Ok(())
    }

    /// The spool root.
    pub fn root(&self) -> &Path {
        &self.dir
    }
}
