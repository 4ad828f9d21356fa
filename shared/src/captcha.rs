//! The CAPTCHA service: creates one-time challenges and verifies answers. A challenge is a
//! file `var/tmp/captcha/{id}.toml` holding a salted hash of the answer (never the answer),
//! its expiry, the wrong attempts so far and whether it was used. Verification runs under
//! the lock `captcha_{id}`, so one challenge can pass at most once even when the same
//! answer arrives twice at the same moment. Ids that are not exactly what we issue (32
//! lower-case hex digits) are refused before they come near a path.

use crate::error::{Error, Result};
use crate::lock::{LockKey, LockRunner};
use crate::state::{self, Durability, Loaded, TriggerReason, Validate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// Characters a challenge is made of: no 0/O, 1/I/L, 2/Z, 5/S, 8/B, so nobody fails on a
/// glyph that could be two.
pub const ALPHABET: &[u8] = b"ACDEFHJKMNPRTUVWXY34679";

/// Length of a challenge id in hex digits (128 random bits).
pub const ID_LEN: usize = 32;

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

/// The decision policy for one verification.
pub fn decide(stored: Option<&Stored>, answer_ok: bool, now: u64, max_attempts: u32) -> ActionPlan {
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
    let mut next = s.clone();
    if answer_ok {
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
}

/// The CAPTCHA service over one runtime tree.
#[derive(Debug, Clone)]
pub struct CaptchaService {
    dir: PathBuf,
    locks: LockRunner,
    settings: Settings,
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

/// Upper-cases the answer and drops whitespace, so "ab c7" and "ABC7" are the same.
fn normalize_answer(answer: &str) -> String {
    answer
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

impl CaptchaService {
    /// A service storing challenges in `dir`.
    pub fn new(dir: impl Into<PathBuf>, locks: LockRunner, settings: Settings) -> Self {
        CaptchaService {
            dir: dir.into(),
            locks,
            settings,
        }
    }

    fn path_of(&self, id: &str) -> PathBuf {
        crate::shard::path(&self.dir, id, ".toml")
    }

    fn hash(&self, id: &str, answer: &str) -> String {
        answer_hash(&self.settings.salt, id, answer)
    }

    /// Creates and stores a new challenge (under its own lock, like every write).
    pub fn create(&self, now: u64) -> Result<Challenge> {
        let id = crate::random::hex(&crate::random::bytes::<16>()?);
        let answer = crate::random::from_alphabet(ALPHABET, self.settings.length)?;
        let expires_at = now + self.settings.lifetime.as_secs();
        let stored = Stored {
            answer_hash: self.hash(&id, &answer),
            created_at: now,
            expires_at,
            attempts: 0,
            used: false,
        };
        let path = self.path_of(&id);
        self.make_room(&path, now)?;
        self.locks.run(&LockKey::captcha(&id), || {
            state::write_with(&path, &stored, Durability::Ephemeral)
        })?;
        Ok(Challenge {
            id,
            answer,
            expires_at,
        })
    }

    /// Verifies `answer` for challenge `id`, once, under `captcha_{id}`.
    pub fn verify(&self, id: &str, answer: &str, now: u64) -> Result<Outcome> {
        if !is_valid_id(id) {
            return Ok(Outcome::Unknown);
        }
        let path = self.path_of(id);
        // A challenge file appears when the challenge is created, before its id is handed
        // out, and never comes back once it is removed. So an id without a file is unknown
        // for good, and saying so needs no lock: a never-issued id leaves no lock file.
        if !state::exists(&path)? {
            return Ok(Outcome::Unknown);
        }
        self.locks.run(&LockKey::captcha(id), || {
            let stored = state::read_or_reset::<Stored>(&path, now, TriggerReason::ContactPost)?;
            // Answers longer than any challenge cannot be right; skip hashing them.
            let answer_ok = answer.len() <= 64
                && stored.as_ref().is_some_and(|s| {
                    crate::random::constant_time_eq(
                        self.hash(id, answer).as_bytes(),
                        s.answer_hash.as_bytes(),
                    )
                });
            match decide(stored.as_ref(), answer_ok, now, self.settings.max_attempts) {
                ActionPlan::Refuse(o) => Ok(o),
                ActionPlan::Update(s, o) => {
                    state::write_with(&path, &s, Durability::Ephemeral)?;
                    Ok(o)
                }
                ActionPlan::Delete(o) => {
                    crate::atomic::remove(&path)?;
                    Ok(o)
                }
            }
        })
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

    /// When challenge `id` was issued, for the time trap; `None` when there is no usable
    /// challenge of that id (the verification then says why). Read without a lock: the
    /// issue time never changes, and a file being replaced is read whole or not at all.
    pub fn issued_at(&self, id: &str, now: u64) -> Result<Option<u64>> {
        if !self.has_challenge(id)? {
            return Ok(None);
        }
        Ok(match state::read::<Stored>(&self.path_of(id), now)? {
            state::Loaded::Valid(s) if !s.used && s.expires_at > now => Some(s.created_at),
            _ => None,
        })
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
        }
    }

    #[test]
    fn a_challenge_passes_once() {
        let ActionPlan::Update(s, Outcome::Passed) = decide(Some(&stored(100)), true, 10, 3) else {
            panic!("pass")
        };
        assert!(matches!(
            decide(Some(&s), true, 11, 3),
            ActionPlan::Refuse(Outcome::Used)
        ));
    }

    #[test]
    fn wrong_answers_are_bounded() {
        let mut s = stored(100);
        for left in [2, 1] {
            match decide(Some(&s), false, 10, 3) {
                ActionPlan::Update(n, Outcome::Wrong { attempts_left }) => {
                    assert_eq!(attempts_left, left);
                    s = n;
                }
                other => panic!("expected wrong, got {other:?}"),
            }
        }
        let ActionPlan::Update(s, Outcome::Exhausted) = decide(Some(&s), false, 10, 3) else {
            panic!("burnt")
        };
        assert!(matches!(
            decide(Some(&s), true, 10, 3),
            ActionPlan::Refuse(Outcome::Exhausted)
        ));
    }

    #[test]
    fn expired_and_unknown_never_pass() {
        assert!(matches!(
            decide(Some(&stored(100)), true, 100, 3),
            ActionPlan::Delete(Outcome::Expired)
        ));
        assert!(matches!(
            decide(None, true, 1, 3),
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
    fn answers_compare_case_and_space_insensitively() {
        assert_eq!(normalize_answer(" ab c7\t"), "ABC7");
    }
}
