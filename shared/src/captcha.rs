//! The CAPTCHA service: creates one-time challenges and verifies answers. A challenge is a
//! file `var/tmp/captcha/{id}.toml` holding a salted hash of the answer (never the answer),
//! its expiry, the wrong attempts so far and whether it was used. Verification runs under
//! the lock `captcha_{id}`, so one challenge can pass at most once even when the same
//! answer arrives twice at the same moment. Ids that are not exactly what we issue (32
//! lower-case hex digits) are refused before they come near a path.
//!
//! Two alternatives to typing the picture's characters hang off the same challenge: the
//! recording (the answer, sealed with a key from the salt, may be rendered as speech once)
//! and proof-of-work for script clients (a SHA-256 puzzle bound to the id, whose
//! difficulty is stored with it). Both are one-time with the challenge. This module never
//! renders anything and never sees a request.

use crate::error::{Error, Result};
use crate::lock::{LockKey, LockRunner};
use crate::state::{self, Durability, Loaded, TriggerReason, Validate};
use crate::store::{Change, Expiry, FileSlot, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// Characters a challenge is made of: no 0/O, 1/I/L, 2/Z, 5/S, 8/B, so nobody fails on a
/// glyph that could be two. Readings of distorted samples also confused 4/A, U/J, Y/A,
/// V/N, X/7, P/R, T/7 and E/F, so A, J, P, V, X, 7 and F are left out as well
/// (docs/SPAM.md).
pub const ALPHABET_TEXT: &str = "CDEHKMNRTUWY3469";
/// [`ALPHABET_TEXT`] as bytes, the form the service draws and checks with.
pub const ALPHABET: &[u8] = ALPHABET_TEXT.as_bytes();

/// Letters that are not in the alphabet, typed for the look-alike that is: a visitor who
/// reads the drawn 4 as an A has still read the picture, and since no answer holds an A,
/// taking it as a 4 lets nobody else through. Only pairs with one obvious partner are
/// here; a typed V could have been an N, a U or a Y, so it stays wrong.
const LOOK_ALIKES: &[(char, char)] = &[('A', '4'), ('J', 'U'), ('P', 'R'), ('7', 'T'), ('F', 'E')];

/// Length of a challenge id in hex digits (128 random bits).
pub const ID_LEN: usize = 32;

/// Most characters an answer can have (config `captcha_length` is 4 to 8).
const MAX_ANSWER: usize = 8;

/// Hardest puzzle a challenge may carry: 2^32 hashes is minutes even for native code.
pub const MAX_POW_BITS: u32 = 32;

/// Longest proof-of-work nonce accepted (decimal digits).
const MAX_NONCE_LEN: usize = 16;

/// What a visitor must do to pass a challenge (config `spam.challenge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Type the picture's characters (or the recording's).
    Image,
    /// The characters and the puzzle, both: the form then needs JavaScript.
    ImageAndWork,
    /// The characters or the puzzle: the page's script may pass by work (the path for
    /// visitors who cannot see the picture); without script the characters are needed.
    WorkOrImage,
}

impl Policy {
    /// Every policy with its name in the config (`spam.challenge`) and in the JSON answer.
    pub const NAMES: [(&'static str, Policy); 3] = [
        ("image", Policy::Image),
        ("image+pow", Policy::ImageAndWork),
        ("pow-or-image", Policy::WorkOrImage),
    ];

    /// The policy's name, as the config spells it.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("image", |(n, _)| n)
    }
}

/// A challenge as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    /// `sha256(salt, id, answer)` in hex.
    pub answer_hash: String,
    /// Unix time of creation.
    pub created_at: u64,
    /// Unix time after which it never passes.
    pub expires_at: u64,
    /// Wrong answers so far.
    pub attempts: u32,
    /// True once it passed (or was burnt by too many wrong answers).
    pub used: bool,
    /// The answer XOR a key from the salt and the id, in hex, so that the recording can
    /// speak it once; empty for challenges from before recordings existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sealed_answer: String,
    /// Leading zero bits the proof-of-work must have; 0: no puzzle was set.
    #[serde(default)]
    pub pow_bits: u32,
    /// The seed of the challenge's one recording (hex), once it was asked for: every later
    /// request (a replay, a browser's range requests) gets the same bytes, never a second
    /// rendering of the answer that could be combined with the first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audio_seed: String,
    /// The voice of that recording (a language code such as "en"), stored with its seed:
    /// the same seed in a second voice would be a second rendering of the answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audio_voice: String,
}

impl Validate for Stored {
    fn validate(&self, now: u64) -> std::result::Result<(), String> {
        if self.answer_hash.len() != 64 || !self.answer_hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("answer_hash is not a sha256 hex digest".into());
        }
        if self.created_at > now + state::CLOCK_SLACK || self.expires_at < self.created_at {
            return Err("time stamps out of range".into());
        }
        if self.sealed_answer.len() > 2 * MAX_ANSWER
            || !self.sealed_answer.len().is_multiple_of(2)
            || !self.sealed_answer.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("sealed_answer is not a short hex string".into());
        }
        let seed_ok = self.audio_seed.is_empty()
            || self.audio_seed.len() == 64
                && self.audio_seed.bytes().all(|b| b.is_ascii_hexdigit());
        if !seed_ok {
            return Err("audio_seed is not 32 bytes of hex".into());
        }
        if self.audio_voice.len() > 8 || !self.audio_voice.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err("audio_voice is not a short language code".into());
        }
        if self.pow_bits > MAX_POW_BITS {
            return Err(format!("pow_bits above {MAX_POW_BITS}"));
        }
        Ok(())
    }
}

/// A fresh challenge: the id goes to the client, the answer only into the image.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// Public id.
    pub id: String,
    /// The text to render.
    pub answer: String,
    /// Unix expiry.
    pub expires_at: u64,
    /// Leading zero bits of the puzzle; 0 when none was set.
    pub pow_bits: u32,
}

/// One visitor's try at a challenge.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempt<'a> {
    /// The characters typed (may be empty on the proof-of-work path).
    pub answer: &'a str,
    /// The proof-of-work nonce, if the script solved the puzzle.
    pub work: Option<&'a str>,
    /// The time trap in its "ask again" form: an attempt sooner than this many seconds
    /// after the challenge was issued is refused with [`Outcome::TooSoon`], and the
    /// challenge stays as it was.
    pub hold_sooner_than: Option<u64>,
}

/// How a verification ended, and when the challenge was issued (0 if unknown), for the
/// time trap in its quarantine form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The outcome.
    pub outcome: Outcome,
    /// Unix time the challenge was issued.
    pub issued_at: u64,
}

/// What the recording endpoint may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recording {
    /// Speak this answer, rendered from this seed: the same seed for every request of one
    /// challenge.
    Answer {
        /// The characters.
        answer: String,
        /// The rendering's seed.
        seed: [u8; 32],
        /// The rendering's voice: the one the first request asked for, whatever later
        /// requests ask.
        voice: String,
    },
    /// Used, expired, unknown, or from before recordings existed.
    Unavailable,
}

/// How a verification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Correct, first use: the challenge is now used up.
    Passed,
    /// Wrong answer; this many tries remain.
    Wrong {
        /// Tries left before the challenge is burnt.
        attempts_left: u32,
    },
    /// Too many wrong answers: the challenge is burnt.
    Exhausted,
    /// Too old.
    Expired,
    /// Passed before: replays never pass.
    Used,
    /// No such challenge (never issued, swept, or a hostile id).
    Unknown,
    /// Sooner than `spam.min_fill_seconds` after it was issued; nothing changed.
    TooSoon,
}

/// What the decision policy wants done with a challenge.
#[derive(Debug, Clone)]
pub enum ActionPlan {
    /// Answer without changing anything.
    Refuse(Outcome),
    /// Store the updated challenge, then answer.
    Update(Stored, Outcome),
    /// Delete the challenge (it expired), then answer.
    Delete(Outcome),
}

/// The decision policy for one verification: `passed` says whether the attempt meets the
/// policy (right characters, or valid work), `hold_sooner_than` is the time trap's "ask
/// again" bound (see [`Attempt`]).
pub fn decide(
    stored: Option<&Stored>,
    passed: bool,
    now: u64,
    max_attempts: u32,
    hold_sooner_than: Option<u64>,
) -> ActionPlan {
    let Some(s) = stored else {
        return ActionPlan::Refuse(Outcome::Unknown);
    };
    if s.used {
        return ActionPlan::Refuse(if s.attempts >= max_attempts {
            Outcome::Exhausted
        } else {
            Outcome::Used
        });
    }
    if now >= s.expires_at {
        return ActionPlan::Delete(Outcome::Expired);
    }
    if hold_sooner_than.is_some_and(|min| now < s.created_at.saturating_add(min)) {
        return ActionPlan::Refuse(Outcome::TooSoon);
    }
    let mut next = s.clone();
    if passed {
        next.used = true;
        return ActionPlan::Update(next, Outcome::Passed);
    }
    next.attempts += 1;
    if next.attempts >= max_attempts {
        next.used = true;
        ActionPlan::Update(next, Outcome::Exhausted)
    } else {
        let attempts_left = max_attempts - next.attempts;
        ActionPlan::Update(next, Outcome::Wrong { attempts_left })
    }
}

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Secret mixed into answer hashes.
    pub salt: String,
    /// Time a challenge may be answered in.
    pub lifetime: Duration,
    /// Wrong answers tolerated.
    pub max_attempts: u32,
    /// Characters per answer.
    pub length: usize,
    /// Ceiling on outstanding challenges (see [`CaptchaService::create`]).
    pub max_challenges: usize,
    /// What passes a challenge.
    pub policy: Policy,
    /// Puzzle difficulty for a client with an empty window, in leading zero bits.
    pub pow_bits: u32,
    /// Bits added as the client's window fills up (all of them when it is full).
    pub pow_extra_bits: u32,
}

impl Settings {
    /// The puzzle difficulty for a challenge issued to a client whose window is `fill`
    /// full (0 to 1); 0: no puzzle. Each extra bit doubles the expected work, so a client
    /// that keeps asking pays more and more.
    pub fn pow_bits_for(&self, fill: f32) -> u32 {
        if self.policy == Policy::Image {
            return 0;
        }
        let steps = self.pow_extra_bits as f32 + 1.0;
        let extra = ((fill.clamp(0.0, 1.0) * steps) as u32).min(self.pow_extra_bits);
        (self.pow_bits + extra).min(MAX_POW_BITS)
    }
}

/// True when `nonce` (1 to 16 decimal digits) solves the puzzle of challenge `id`: the
/// SHA-256 of `"{id}:{nonce}"` starts with at least `bits` zero bits. One hash, however
/// hard the puzzle.
pub fn work_valid(id: &str, nonce: &str, bits: u32) -> bool {
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN || !nonce.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(b":");
    h.update(nonce.as_bytes());
    leading_zero_bits(&h.finalize()) >= bits
}

fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in digest {
        if b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

/// The key the answer is sealed with for the recording: only someone who knows the salt
/// can open it, as only they can test guesses against the answer hash.
fn seal_key(salt: &str, id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"formwarden-recording\0");
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(id.as_bytes());
    h.finalize().into()
}

fn seal(salt: &str, id: &str, answer: &str) -> String {
    let key = seal_key(salt, id);
    let sealed: Vec<u8> = answer.bytes().zip(key).map(|(a, k)| a ^ k).collect();
    crate::random::hex(&sealed)
}

fn unseal(salt: &str, id: &str, sealed: &str) -> Option<String> {
    let key = seal_key(salt, id);
    let bytes = sealed.as_bytes();
    let mut out = String::with_capacity(bytes.len() / 2);
    for (pair, k) in bytes.chunks(2).zip(key) {
        let byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()? ^ k;
        // Any upper-case letter or digit, not just today's alphabet: a challenge issued
        // before an upgrade that shrank the alphabet opens all the same, and `recording`
        // decides whether it can still be spoken.
        if !(byte.is_ascii_uppercase() || byte.is_ascii_digit()) {
            return None;
        }
        out.push(char::from(byte));
    }
    Some(out)
}

/// The decision for a recording request: `None` when the challenge cannot be spoken (used,
/// expired, unknown, or from before recordings existed); else the challenge with its
/// recording's seed and voice, and whether it must be stored (the first request, which
/// chooses both; or a recording stored before voices were kept, which keeps its seed and
/// from now on the asked voice).
fn decide_recording(
    stored: Option<&Stored>,
    now: u64,
    fresh: [u8; 32],
    voice: &str,
) -> Option<(Stored, bool)> {
    let s = stored?;
    if s.used || now >= s.expires_at || s.sealed_answer.is_empty() {
        return None;
    }
    let mut next = s.clone();
    if next.audio_voice.is_empty() {
        next.audio_voice = voice.to_string();
    }
    if next.audio_seed.is_empty() {
        next.audio_seed = crate::random::hex(&fresh);
    }
    let store = next.audio_seed != s.audio_seed || next.audio_voice != s.audio_voice;
    Some((next, store))
}

fn seed_of(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    (hex.len() == 64).then_some(out)
}

/// The CAPTCHA service over one runtime tree.
#[derive(Debug, Clone)]
pub struct CaptchaService {
    dir: PathBuf,
    locks: LockRunner,
    settings: Settings,
    store: Store,
}

/// True for ids of the form we issue.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The stored form of `answer` for challenge `id`: `sha256(salt, id, answer)` in hex, over
/// the normalized answer. Only someone who knows the salt can test guesses against it.
pub fn answer_hash(salt: &str, id: &str, answer: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"formwarden-captcha\0");
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(id.as_bytes());
    h.update(b"\0");
    h.update(normalize_answer(answer).as_bytes());
    crate::random::hex(&h.finalize())
}

/// Upper-cases the answer, drops whitespace and reads [`LOOK_ALIKES`] as their partners,
/// so "cd e4" and "CDE4" are the same, and so are "a3" and "43".
fn normalize_answer(answer: &str) -> String {
    answer
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .map(|c| {
            LOOK_ALIKES
                .iter()
                .find(|(typed, _)| *typed == c)
                .map_or(c, |&(_, meant)| meant)
        })
        .collect()
}

impl CaptchaService {
    /// A service storing challenges in `dir`.
    pub fn new(dir: impl Into<PathBuf>, locks: LockRunner, settings: Settings) -> Self {
        CaptchaService {
            dir: dir.into(),
            locks,
            settings,
            store: Store::Files,
        }
    }

    /// The same service keeping its challenges in `store` instead.
    pub fn with_store(self, store: Store) -> Self {
        CaptchaService { store, ..self }
    }

    fn path_of(&self, id: &str) -> PathBuf {
        crate::shard::path(&self.dir, id, ".toml")
    }

    /// Where challenge `path` lives in the file store: not fsynced, since a challenge lost
    /// in a power cut costs a visitor one new picture.
    fn slot<'a>(&'a self, path: &'a std::path::Path) -> FileSlot<'a> {
        FileSlot {
            path,
            locks: &self.locks,
            durability: Durability::Ephemeral,
        }
    }

    /// How long a challenge stays in Redis: twice its lifetime, so that an answer that
    /// comes late is told "expired" and a replay "used" rather than "unknown"; then Redis
    /// drops it (with files, the sweep does).
    fn kept_for(&self) -> Expiry {
        Expiry::After(self.settings.lifetime.as_secs().saturating_mul(2))
    }

    fn hash(&self, id: &str, answer: &str) -> String {
        answer_hash(&self.settings.salt, id, answer)
    }

    /// Creates and stores a new challenge (under its own lock, like every write).
    /// `fill` is the share of the client's window used so far (see
    /// [`Settings::pow_bits_for`]).
    pub fn create(&self, now: u64, fill: f32) -> Result<Challenge> {
        let id = crate::random::hex(&crate::random::bytes::<16>()?);
        let answer = crate::random::from_alphabet(ALPHABET, self.settings.length)?;
        let expires_at = now + self.settings.lifetime.as_secs();
        let pow_bits = self.settings.pow_bits_for(fill);
        let stored = Stored {
            answer_hash: self.hash(&id, &answer),
            created_at: now,
            expires_at,
            attempts: 0,
            used: false,
            sealed_answer: seal(&self.settings.salt, &id, &answer),
            pow_bits,
            audio_seed: String::new(),
            audio_voice: String::new(),
        };
        if let Some(redis) = self.store.redis() {
            // No ceiling: every challenge expires in Redis (see OPERATIONS.md on maxmemory).
            redis.put(&LockKey::captcha(&id), &stored, self.kept_for())?;
        } else {
            let path = self.path_of(&id);
            self.make_room(&path, now)?;
            self.locks.run(&LockKey::captcha(&id), || {
                state::write_with(&path, &stored, Durability::Ephemeral)
            })?;
        }
        Ok(Challenge {
            id,
            answer,
            expires_at,
            pow_bits,
        })
    }

    /// The answer of challenge `id` and the seed of its one recording, under
    /// `captcha_{id}`: the first request chooses the seed and stores it with the challenge,
    /// every later one gets the same.
    pub fn recording(&self, id: &str, now: u64, voice: &str) -> Result<Recording> {
        let path = self.path_of(id);
        let key = LockKey::captcha(id);
        if !is_valid_id(id) || !self.store.exists(&path, &key)? {
            return Ok(Recording::Unavailable);
        }
        let fresh = crate::random::bytes::<32>()?;
        let salt = &self.settings.salt;
        self.store.update(
            self.slot(&path),
            &key,
            now,
            TriggerReason::CaptchaGet,
            |stored: Option<&Stored>| {
                let Some((next, store)) = decide_recording(stored, now, fresh, voice) else {
                    return (Change::Keep, Recording::Unavailable);
                };
                let (Some(answer), Some(seed)) = (
                    unseal(salt, id, &next.sealed_answer),
                    seed_of(&next.audio_seed),
                ) else {
                    // A salt changed since the challenge was issued: it cannot be spoken.
                    return (Change::Keep, Recording::Unavailable);
                };
                if !answer.bytes().all(|b| ALPHABET.contains(&b)) {
                    // Issued before an upgrade took a character out of the alphabet: there
                    // is no clip for it any more. The picture still works, and the visitor
                    // is told to choose a new one.
                    return (Change::Keep, Recording::Unavailable);
                }
                let answer = Recording::Answer {
                    answer,
                    seed,
                    voice: next.audio_voice.clone(),
                };
                if store {
                    (Change::Put(next, Expiry::Unchanged), answer)
                } else {
                    (Change::Keep, answer)
                }
            },
        )
    }

    /// Verifies one attempt at challenge `id`, once, under `captcha_{id}`.
    pub fn verify(&self, id: &str, attempt: &Attempt<'_>, now: u64) -> Result<Verified> {
        let unknown = Verified {
            outcome: Outcome::Unknown,
            issued_at: 0,
        };
        if !is_valid_id(id) {
            return Ok(unknown);
        }
        let path = self.path_of(id);
        let key = LockKey::captcha(id);
        // A challenge appears when it is created, before its id is handed out, and never
        // comes back once it is removed. So an id without one is unknown for good, and
        // saying so needs no lock: a never-issued id leaves no lock file.
        if !self.store.exists(&path, &key)? {
            return Ok(unknown);
        }
        self.store.update(
            self.slot(&path),
            &key,
            now,
            TriggerReason::ContactPost,
            |stored: Option<&Stored>| {
                let passed = stored.is_some_and(|s| self.passes(id, s, attempt));
                let plan = decide(
                    stored,
                    passed,
                    now,
                    self.settings.max_attempts,
                    attempt.hold_sooner_than,
                );
                let (change, outcome) = match plan {
                    ActionPlan::Refuse(o) => (Change::Keep, o),
                    ActionPlan::Update(s, o) => (Change::Put(s, Expiry::Unchanged), o),
                    ActionPlan::Delete(o) => (Change::Delete, o),
                };
                let issued_at = stored.map_or(0, |s| s.created_at);
                (change, Verified { outcome, issued_at })
            },
        )
    }

    /// The service's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether `attempt` meets the policy for challenge `s`: the characters, the work, or
    /// either. A challenge issued without a puzzle always needs the characters.
    fn passes(&self, id: &str, s: &Stored, attempt: &Attempt<'_>) -> bool {
        // Answers longer than any challenge cannot be right; skip hashing them.
        let answer_ok = !attempt.answer.is_empty()
            && attempt.answer.len() <= 64
            && crate::random::constant_time_eq(
                self.hash(id, attempt.answer).as_bytes(),
                s.answer_hash.as_bytes(),
            );
        let work_ok = s.pow_bits > 0 && attempt.work.is_some_and(|n| work_valid(id, n, s.pow_bits));
        match (self.settings.policy, s.pow_bits) {
            (Policy::Image, _) | (_, 0) => answer_ok,
            (Policy::ImageAndWork, _) => answer_ok && work_ok,
            (Policy::WorkOrImage, _) => answer_ok || work_ok,
        }
    }

    /// The ceiling policy: when the shard a new challenge goes into already holds its
    /// share of `max_challenges`, its finished challenges (expired or used) are removed
    /// first; if it is still full, the new challenge is refused with [`Error::Full`] (a
    /// 503 with `Retry-After`), rather than letting a flood fill the disk.
    fn make_room(&self, new: &std::path::Path, now: u64) -> Result<()> {
        let Some(dir) = new.parent() else {
            return Ok(());
        };
        let share = self.settings.max_challenges.div_ceil(crate::shard::COUNT);
        let listed = state::list(dir, ".toml")?;
        if listed.len() < share {
            return Ok(());
        }
        let mut left = listed.len();
        for l in &listed {
            if self.remove_finished(&l.stem, now)? {
                left -= 1;
            }
        }
        if left >= share {
            tracing::warn!(
                max_challenges = self.settings.max_challenges,
                "outstanding CAPTCHA challenges at their ceiling: new ones refused for now"
            );
            return Err(Error::Full {
                what: "CAPTCHA challenges",
                limit: self.settings.max_challenges,
            });
        }
        Ok(())
    }

    /// Removes challenge `id` with its lock file when it is finished (expired, used, or
    /// unreadable), under its lock; a busy one stays. Returns whether it went.
    fn remove_finished(&self, id: &str, now: u64) -> Result<bool> {
        let path = self.path_of(id);
        self.locks.remove_if(&LockKey::captcha(id), || {
            let finished = match state::read::<Stored>(&path, now)? {
                Loaded::Valid(s) => s.used || now >= s.expires_at,
                Loaded::Invalid(reason) => {
                    state::reset(&path, &reason, TriggerReason::Sweep)?;
                    true
                }
                Loaded::Missing => true,
            };
            if finished {
                crate::atomic::remove(&path)?;
            }
            Ok(finished)
        })
    }

    /// Removes finished challenges (expired or used: neither can ever pass again) in shard
    /// `shard`, with their lock files. At most `budget` challenges are looked at; returns
    /// how many went and whether the budget ran out.
    pub fn sweep_shard(&self, shard: usize, now: u64, budget: usize) -> Result<(usize, bool)> {
        let dir = self.dir.join(crate::shard::name(shard));
        let mut removed = 0;
        for (looked, l) in state::list(&dir, ".toml")?.iter().enumerate() {
            if looked == budget {
                return Ok((removed, true));
            }
            removed += usize::from(self.remove_finished(&l.stem, now)?);
        }
        Ok((removed, false))
    }

    /// True when challenge `id` has a file (for the orphan-lock sweep).
    pub fn has_challenge(&self, id: &str) -> Result<bool> {
        if !is_valid_id(id) {
            return Ok(false);
        }
        state::exists(&self.path_of(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(expires_at: u64) -> Stored {
        Stored {
            answer_hash: "0".repeat(64),
            created_at: 0,
            expires_at,
            attempts: 0,
            used: false,
            sealed_answer: String::new(),
            pow_bits: 0,
            audio_seed: String::new(),
            audio_voice: String::new(),
        }
    }

    #[test]
    fn a_challenge_passes_once() {
        let ActionPlan::Update(s, Outcome::Passed) = decide(Some(&stored(100)), true, 10, 3, None)
        else {
            panic!("pass")
        };
        assert!(matches!(
            decide(Some(&s), true, 11, 3, None),
            ActionPlan::Refuse(Outcome::Used)
        ));
    }

    #[test]
    fn wrong_answers_are_bounded() {
        let mut s = stored(100);
        for left in [2, 1] {
            match decide(Some(&s), false, 10, 3, None) {
                ActionPlan::Update(n, Outcome::Wrong { attempts_left }) => {
                    assert_eq!(attempts_left, left);
                    s = n;
                }
                other => panic!("expected wrong, got {other:?}"),
            }
        }
        let ActionPlan::Update(s, Outcome::Exhausted) = decide(Some(&s), false, 10, 3, None) else {
            panic!("burnt")
        };
        assert!(matches!(
            decide(Some(&s), true, 10, 3, None),
            ActionPlan::Refuse(Outcome::Exhausted)
        ));
    }

    #[test]
    fn expired_and_unknown_never_pass() {
        assert!(matches!(
            decide(Some(&stored(100)), true, 100, 3, None),
            ActionPlan::Delete(Outcome::Expired)
        ));
        assert!(matches!(
            decide(None, true, 1, 3, None),
            ActionPlan::Refuse(Outcome::Unknown)
        ));
    }

    #[test]
    fn ids_are_checked_strictly() {
        assert!(is_valid_id(&"a".repeat(32)));
        assert!(!is_valid_id(&"A".repeat(32)));
        assert!(!is_valid_id("../../etc/passwd"));
        assert!(!is_valid_id(&"a".repeat(33)));
        assert!(!is_valid_id("ääääääääääääääää"));
    }

    #[test]
    fn the_time_trap_holds_a_quick_attempt_without_changing_anything() {
        let s = stored(100);
        assert!(matches!(
            decide(Some(&s), true, 2, 3, Some(3)),
            ActionPlan::Refuse(Outcome::TooSoon)
        ));
        assert!(matches!(
            decide(Some(&s), true, 3, 3, Some(3)),
            ActionPlan::Update(_, Outcome::Passed)
        ));
    }

    #[test]
    fn work_is_checked_with_one_hash_against_its_own_id() {
        let id = "0123456789abcdef0123456789abcdef";
        let nonce = (0u64..)
            .map(|n| n.to_string())
            .find(|n| work_valid(id, n, 12))
            .expect("a nonce");
        assert!(work_valid(id, &nonce, 12));
        for bad in ["", "-1", "12a", "00000000000000000"] {
            assert!(!work_valid(id, bad, 0), "{bad:?}");
        }
        assert_eq!(leading_zero_bits(&[0, 0x10, 0xff]), 11);
        assert_eq!(leading_zero_bits(&[0; 4]), 32);
    }

    #[test]
    fn the_sealed_answer_opens_only_with_its_salt_and_id() {
        let id = "0123456789abcdef0123456789abcdef";
        let sealed = seal("salt-one", id, "CDK46");
        assert!(!sealed.contains("CDK46"));
        assert_eq!(unseal("salt-one", id, &sealed).as_deref(), Some("CDK46"));
        assert_ne!(unseal("salt-two", id, &sealed).as_deref(), Some("CDK46"));
    }

    #[test]
    fn a_challenge_has_one_recording_seed_for_all_its_requests() {
        let mut s = stored(100);
        s.sealed_answer = "00".into();
        let (first, store) = decide_recording(Some(&s), 10, [7; 32], "de").expect("granted");
        assert!(store, "the first request stores its seed");
        assert_eq!(seed_of(&first.audio_seed), Some([7; 32]));
        assert_eq!(first.audio_voice, "de");
        let (again, store) = decide_recording(Some(&first), 11, [9; 32], "en").expect("granted");
        assert!(!store);
        assert_eq!(
            (again.audio_seed.as_str(), again.audio_voice.as_str()),
            (first.audio_seed.as_str(), "de"),
            "never a second rendering, not even in another voice"
        );
        assert!(
            decide_recording(Some(&s), 100, [1; 32], "en").is_none(),
            "expired"
        );
        s.used = true;
        assert!(
            decide_recording(Some(&s), 10, [1; 32], "en").is_none(),
            "used"
        );
        assert!(decide_recording(None, 10, [1; 32], "en").is_none());
    }

    #[test]
    fn the_puzzle_grows_with_the_window_and_only_under_a_work_policy() {
        let mut settings = Settings {
            salt: String::new(),
            lifetime: Duration::from_secs(60),
            max_attempts: 3,
            length: 5,
            max_challenges: 1000,
            policy: Policy::WorkOrImage,
            pow_bits: 18,
            pow_extra_bits: 4,
        };
        let bits: Vec<u32> = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
            .iter()
            .map(|&f| settings.pow_bits_for(f))
            .collect();
        assert_eq!(bits, [18, 19, 20, 21, 22, 22]);
        settings.policy = Policy::Image;
        assert_eq!(settings.pow_bits_for(1.0), 0);
    }

    #[test]
    fn answers_compare_case_and_space_insensitively() {
        assert_eq!(normalize_answer(" cd e4\t"), "CDE4");
    }

    /// A look-alike typed for a character of the alphabet counts as that character; every
    /// pair maps out of the alphabet into it, so no answer gains a second spelling that
    /// could hide another answer.
    #[test]
    fn look_alikes_are_read_as_their_partners() {
        assert_eq!(normalize_answer("a j p7f"), "4URTE");
        for &(typed, meant) in LOOK_ALIKES {
            assert!(
                !ALPHABET.contains(&(typed as u8)),
                "{typed} is in the alphabet"
            );
            assert!(
                ALPHABET.contains(&(meant as u8)),
                "{meant} is not in the alphabet"
            );
        }
        let salt = "s".repeat(32);
        assert_eq!(
            answer_hash(&salt, "id", "4UR3"),
            answer_hash(&salt, "id", "aJp3")
        );
    }

    /// What the model knows of one challenge.
    #[derive(Debug, Clone, Copy)]
    enum Known {
        Live {
            created: u64,
            attempts: u32,
            used: bool,
        },
        Gone,
    }

    /// One step: which challenge, how far time moves, and what is sent: the right
    /// answer, a wrong one, or the right one under a time trap of `hold` seconds.
    #[derive(Debug, Clone, Copy)]
    enum Try {
        Right,
        Wrong,
        RightHeld(u64),
    }

    const LIFETIME: u64 = 300;
    const MAX_ATTEMPTS: u32 = 3;

    /// The contract in plain words: unknown once gone; a used challenge never passes again
    /// (and says whether wrong answers used it up); at its lifetime's end it expires and is
    /// gone; an answer held by the time trap changes nothing; the right answer passes once;
    /// wrong answers burn it at the limit.
    fn model(k: &mut Known, t: Try, now: u64) -> Outcome {
        let Known::Live {
            created,
            attempts,
            used,
        } = k
        else {
            return Outcome::Unknown;
        };
        if *used {
            return if *attempts >= MAX_ATTEMPTS {
                Outcome::Exhausted
            } else {
                Outcome::Used
            };
        }
        if now >= *created + LIFETIME {
            *k = Known::Gone;
            return Outcome::Expired;
        }
        match t {
            Try::RightHeld(hold) if now < *created + hold => Outcome::TooSoon,
            Try::Right | Try::RightHeld(_) => {
                *used = true;
                Outcome::Passed
            }
            Try::Wrong => {
                *attempts += 1;
                if *attempts >= MAX_ATTEMPTS {
                    *used = true;
                    Outcome::Exhausted
                } else {
                    Outcome::Wrong {
                        attempts_left: MAX_ATTEMPTS - *attempts,
                    }
                }
            }
        }
    }

    /// Time steps that add up to the lifetime's end exactly, often: the edges are where a
    /// model and a service part.
    fn a_step() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        (0usize..4).prop_map(|i| [0, 1, 50, 100][i])
    }

    fn a_try() -> impl proptest::strategy::Strategy<Value = Try> {
        use proptest::prelude::*;
        // Held answers are the most common, so that challenges often live to their end.
        prop_oneof![
            1 => Just(Try::Right),
            2 => Just(Try::Wrong),
            4 => (0u64..400).prop_map(Try::RightHeld),
        ]
    }

    proptest::proptest! {
        #![proptest_config(crate::model_testing::cases())]

        /// Random attempts at three challenges on real files, with time moving forward in
        /// steps of 0, 1, 50 or 100 s (the lifetime is 300 s, so challenges expire within
        /// a sequence, often exactly at its end): the service's outcome is
        /// the model's at every step.
        #[test]
        fn verification_on_files_answers_like_the_plain_model(
            ops in proptest::collection::vec((0usize..3, a_try(), a_step()), 1..40)
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let locks = crate::model_testing::locks(dir.path());
            let service = CaptchaService::new(
                dir.path().join("captcha"),
                locks,
                Settings {
                    salt: "m0del-salt-0123456789abcdefghijklmnop".into(),
                    lifetime: std::time::Duration::from_secs(LIFETIME),
                    max_attempts: MAX_ATTEMPTS,
                    length: 5,
                    max_challenges: 1000,
                    policy: Policy::Image,
                    pow_bits: 0,
                    pow_extra_bits: 0,
                },
            );
            let mut now = 1_700_000_000;
            let mut challenges = Vec::new();
            let mut known = Vec::new();
            for _ in 0..3 {
                challenges.push(service.create(now, 0.0).expect("create"));
                known.push(Known::Live { created: now, attempts: 0, used: false });
            }
            for (which, t, step) in ops {
                now += step;
                let c = &challenges[which];
                let wrong = if c.answer == "AAAAA" { "BBBBB" } else { "AAAAA" };
                let attempt = Attempt {
                    answer: if matches!(t, Try::Wrong) { wrong } else { &c.answer },
                    work: None,
                    hold_sooner_than: match t {
                        Try::RightHeld(hold) => Some(hold),
                        _ => None,
                    },
                };
                let got = service.verify(&c.id, &attempt, now).expect("verify").outcome;
                proptest::prop_assert_eq!(got, model(&mut known[which], t, now), "{:?} at +{}", t, step);
            }
        }
    }
}
