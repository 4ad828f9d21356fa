//! The token service: per-profile token lists in `var/state/tokens/{profile}.toml`.
//! Rotation issues a new random token (shown once, stored only as a hash), keeps the
//! previous ones for the profile's grace period and drops expired ones; revocation removes
//! tokens. Both write under the lock `token_{profile}` through the atomic writer (or, with
//! the Redis store, as one atomic change of that key).
//! Verification is lock-free: it reads the file as it is, and because every write is a
//! rename it sees the old or the new list, never a torn one. Profile names are checked
//! against a strict alphabet and must be configured before they can name a file.

use crate::config::TokenProfile;
use crate::error::{Error, Result};
use crate::lock::{LockKey, LockRunner};
use crate::state::{self, Durability, Loaded, TriggerReason, Validate};
use crate::store::{Change, Expiry, FileSlot, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Prefix of every issued token, so that one found in a log or a repository is recognisable.
pub const TOKEN_PREFIX: &str = "fwt_";

/// One stored token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Public id (random, not derived from the secret).
    pub id: String,
    /// `sha256` of the secret, hex.
    pub hash: String,
    /// Unix time of issue.
    pub created_at: u64,
    /// Unix expiry; 0 means "until rotated away".
    pub expires_at: u64,
}

/// A profile's token list as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    /// Rotations ever performed on this profile.
    pub rotations: u64,
    /// Tokens, oldest first; the last one is the current token.
    #[serde(default)]
    pub token: Vec<Entry>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Validate for TokenList {
    fn validate(&self, now: u64) -> std::result::Result<(), String> {
        let mut ids = BTreeSet::new();
        for t in &self.token {
            if !is_hex(&t.id, 12) || !is_hex(&t.hash, 64) {
                return Err(format!("token {:?} has a malformed id or hash", t.id));
            }
            if !ids.insert(&t.id) {
                return Err(format!("token id {} appears twice", t.id));
            }
            if t.created_at > now + state::CLOCK_SLACK {
                return Err(format!("token {} was created in the future", t.id));
            }
        }
        if self.token.len() as u64 > self.rotations {
            return Err("more tokens than rotations".into());
        }
        Ok(())
    }
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_at == 0 || now < self.expires_at
    }
}

/// A freshly issued token. The secret exists only here: it is shown once and then only its
/// hash remains.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Public id.
    pub id: String,
    /// The secret token.
    pub secret: String,
    /// Unix expiry (0: until rotated away).
    pub expires_at: u64,
    /// The profile's rotation count after this one.
    pub rotation: u64,
}

/// The decision policy for a rotation: the new list, given the old one.
pub fn decide_rotation(
    current: &TokenList,
    fresh: Entry,
    profile: &TokenProfile,
    now: u64,
) -> TokenList {
    let grace_end = now + profile.grace.as_secs();
    let mut kept: Vec<Entry> = current
        .token
        .iter()
        .filter(|t| t.live(now))
        .map(|t| Entry {
            expires_at: if t.expires_at == 0 {
                grace_end
            } else {
                t.expires_at.min(grace_end)
            },
            ..t.clone()
        })
        .filter(|t| t.live(now))
        .collect();
    kept.push(fresh);
    let excess = kept.len().saturating_sub(profile.max_tokens);
    kept.drain(..excess);
    TokenList {
        rotations: current.rotations + 1,
        token: kept,
    }
}

/// The token service over one runtime tree.
#[derive(Debug, Clone)]
pub struct TokenService {
    dir: PathBuf,
    locks: LockRunner,
    profiles: BTreeMap<String, TokenProfile>,
    store: Store,
}

/// What `list` shows: everything but secrets and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// Unix time of issue.
    pub created_at: u64,
    /// Unix expiry (0: until rotated away).
    pub expires_at: u64,
    /// True for the newest token.
    pub current: bool,
}

fn hash_secret(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"formwarden-token\0");
    h.update(secret.as_bytes());
    crate::random::hex(&h.finalize())
}

impl TokenService {
    /// A service storing lists in `dir` for the configured `profiles`.
    pub fn new(
        dir: impl Into<PathBuf>,
        locks: LockRunner,
        profiles: BTreeMap<String, TokenProfile>,
    ) -> Self {
        TokenService {
            dir: dir.into(),
            locks,
            profiles,
            store: Store::Files,
        }
    }

    /// The same service keeping its lists in `store` instead.
    pub fn with_store(self, store: Store) -> Self {
        TokenService { store, ..self }
    }

    /// Checks `profile` and returns its settings and file.
    fn profile(&self, profile: &str) -> Result<(&TokenProfile, PathBuf)> {
        crate::config::check_profile_name(profile).map_err(|detail| Error::InvalidInput {
            what: "profile",
            detail,
        })?;
        let p = self.profiles.get(profile).ok_or_else(|| Error::NotFound {
            what: "token profile",
            name: profile.to_string(),
        })?;
        Ok((p, self.dir.join(format!("{profile}.toml"))))
    }

    /// Issues a new token for `profile` under `token_{profile}`.
    pub fn rotate(&self, profile: &str, now: u64) -> Result<Issued> {
        let (settings, path) = self.profile(profile)?;
        let secret = format!(
            "{TOKEN_PREFIX}{}",
            crate::random::hex(&crate::random::bytes::<32>()?)
        );
        let id = crate::random::hex(&crate::random::bytes::<6>()?);
        let expires_at = settings.lifetime.map_or(0, |l| now + l.as_secs());
        let fresh = Entry {
            id: id.clone(),
            hash: hash_secret(&secret),
            created_at: now,
            expires_at,
        };
        let key = LockKey::token(profile);
        let rotation = match self.store.redis() {
            // Token lists never expire in Redis; only rotation and revocation change them.
            Some(redis) => redis.update(
                &key,
                now,
                TriggerReason::TokenRotate,
                |current: Option<&TokenList>| {
                    let next = decide_rotation(
                        current.unwrap_or(&TokenList::default()),
                        fresh.clone(),
                        settings,
                        now,
                    );
                    let rotation = next.rotations;
                    (Change::Put(next, Expiry::Never), rotation)
                },
            )?,
            None => {
                state::update_durable(
                    &path,
                    &self.locks,
                    &key,
                    now,
                    TriggerReason::TokenRotate,
                    |current: &TokenList| decide_rotation(current, fresh.clone(), settings, now),
                )?
                .rotations
            }
        };
        tracing::info!(profile, id = %id, rotation, "token rotated");
        Ok(Issued {
            id,
            secret,
            expires_at,
            rotation,
        })
    }

    /// Removes the token with public id `id` (or every token with `"all"`). Returns how
    /// many were removed.
    pub fn revoke(&self, profile: &str, id: &str, now: u64) -> Result<usize> {
        let (_, path) = self.profile(profile)?;
        let slot = FileSlot {
            path: &path,
            locks: &self.locks,
            durability: Durability::Durable,
        };
        let removed = self.store.update(
            slot,
            &LockKey::token(profile),
            now,
            TriggerReason::TokenRevoke,
            |current: Option<&TokenList>| {
                let mut list = current.cloned().unwrap_or_default();
                let before = list.token.len();
                list.token.retain(|t| id != "all" && t.id != id);
                let removed = before - list.token.len();
                if removed == 0 {
                    return (Change::Keep, 0);
                }
                (Change::Put(list, Expiry::Never), removed)
            },
        )?;
        if removed > 0 {
            tracing::info!(profile, id, removed, "tokens revoked");
        }
        Ok(removed)
    }

    /// The tokens of `profile` that are still valid, without secrets. Lock-free.
    pub fn list(&self, profile: &str, now: u64) -> Result<Vec<TokenInfo>> {
        let list = self.read_lock_free(profile, now)?;
        let newest = list.token.last().map(|t| t.id.clone());
        Ok(list
            .token
            .iter()
            .filter(|t| t.live(now))
            .map(|t| TokenInfo {
                id: t.id.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                current: Some(&t.id) == newest.as_ref(),
            })
            .collect())
    }

    /// The stored list, read without a lock. Invalid state fails closed (no token is
    /// valid) and is logged; the next rotation resets it under the lock.
    pub fn read_lock_free(&self, profile: &str, now: u64) -> Result<TokenList> {
        let (_, path) = self.profile(profile)?;
        match self
            .store
            .read::<TokenList>(&path, &LockKey::token(profile), now)?
        {
            Loaded::Valid(l) => Ok(l),
            Loaded::Missing => Ok(TokenList::default()),
            Loaded::Invalid(reason) => {
                tracing::warn!(path = %path.display(), reason, "token list invalid: no token verifies until the next rotation resets it");
                Ok(TokenList::default())
            }
        }
    }

    /// The first admin credential without a shell: true when `secret` matches the
    /// configured `bootstrap_sha256` (plain SHA-256 hex, so an operator can make it with
    /// `sha256sum` on their own computer; only the digest is on the server) and `profile`
    /// has no live token yet. Once the first token exists the secret opens nothing any
    /// more: it is burnt by its first use. A list that cannot be read never counts as
    /// empty. Secrets shorter than 32 characters are never accepted.
    pub fn bootstrap_accepts(
        &self,
        digest: Option<&str>,
        profile: &str,
        secret: &str,
        now: u64,
    ) -> Result<bool> {
        let Some(digest) = digest else {
            return Ok(false);
        };
        if secret.len() < 32 || secret.len() > 256 {
            return Ok(false);
        }
        let given = crate::random::hex(&Sha256::digest(secret.as_bytes()));
        if !crate::random::constant_time_eq(given.as_bytes(), digest.as_bytes()) {
            return Ok(false);
        }
        let (_, path) = self.profile(profile)?;
        Ok(
            match self
                .store
                .read::<TokenList>(&path, &LockKey::token(profile), now)?
            {
                Loaded::Missing => true,
                Loaded::Valid(l) => !l.token.iter().any(|t| t.live(now)),
                Loaded::Invalid(_) => false,
            },
        )
    }

    /// True when `secret` is a live token of `profile`. Lock-free; constant-time per entry.
    pub fn verify(&self, profile: &str, secret: &str, now: u64) -> Result<bool> {
        let list = self.read_lock_free(profile, now)?;
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > 128 {
            return Ok(false);
        }
        let h = hash_secret(secret);
        let mut found = false;
        for t in &list.token {
            found |= t.live(now) & crate::random::constant_time_eq(h.as_bytes(), t.hash.as_bytes());
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(id: &str, created: u64, exp: u64) -> Entry {
        Entry {
            id: id.repeat(12),
            hash: "0".repeat(64),
            created_at: created,
            expires_at: exp,
        }
    }

    #[test]
    fn rotation_keeps_previous_tokens_for_the_grace_period_only() {
        let p = TokenProfile {
            lifetime: None,
            grace: Duration::from_secs(10),
            max_tokens: 3,
        };
        let l1 = decide_rotation(&TokenList::default(), entry("a", 0, 0), &p, 0);
        let l2 = decide_rotation(&l1, entry("b", 5, 0), &p, 5);
        assert_eq!(l2.token[0].expires_at, 15);
        assert_eq!(l2.token[1].expires_at, 0);
        let l3 = decide_rotation(&l2, entry("c", 20, 0), &p, 20);
        assert_eq!(
            l3.token.iter().map(|t| &t.id[..1]).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(l3.rotations, 3);
    }

    #[test]
    fn max_tokens_drops_the_oldest() {
        let p = TokenProfile {
            lifetime: None,
            grace: Duration::from_secs(100),
            max_tokens: 2,
        };
        let mut l = TokenList::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            l = decide_rotation(&l, entry(id, i as u64, 0), &p, i as u64);
        }
        assert_eq!(
            l.token.iter().map(|t| &t.id[..1]).collect::<Vec<_>>(),
            ["b", "c"]
        );
    }

    #[test]
    fn hostile_profile_names_are_refused() {
        for bad in ["", "../x", "a/b", "A", "-x", "ä", &"a".repeat(33)] {
            assert!(crate::config::check_profile_name(bad).is_err(), "{bad:?}");
        }
        assert!(crate::config::check_profile_name("deploy-2").is_ok());
    }

    /// One step against one profile: rotate, verify the n-th token issued so far, revoke
    /// it, revoke all, each after time moved forward.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Rotate,
        Verify(usize),
        Revoke(usize),
        RevokeAll,
    }

    /// Time steps that meet the 300 s lifetime and the 100 s grace exactly, often.
    fn a_step() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        (0usize..4).prop_map(|i| [0u64, 1, 50, 100][i])
    }

    fn an_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Op::Rotate),
            6 => (0usize..8).prop_map(Op::Verify),
            1 => (0usize..8).prop_map(Op::Revoke),
            1 => Just(Op::RevokeAll),
        ]
    }

    proptest::proptest! {
        #![proptest_config(crate::model_testing::cases())]

        /// Random rotations, verifications and revocations of one profile on real files
        /// (lifetime 300 s or none, grace 100 s, at most 3 tokens), time moving in steps
        /// that meet lifetimes and grace ends exactly, against the plain model: a token
        /// verifies while it was issued, not revoked, not pushed out by the three newer
        /// ones, before its lifetime ends and, once a newer one exists, before the grace
        /// after that rotation ends.
        #[test]
        fn the_token_service_on_files_answers_like_the_plain_model(
            lifetime in proptest::option::of(proptest::strategy::Just(300u64)),
            ops in proptest::collection::vec(
                (an_op(), a_step()),
                1..40,
            )
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let locks = crate::model_testing::locks(dir.path());
            let profile = TokenProfile {
                lifetime: lifetime.map(Duration::from_secs),
                grace: Duration::from_secs(100),
                max_tokens: 3,
            };
            let service = TokenService::new(
                dir.path().join("tokens"),
                locks,
                [("deploy".to_string(), profile)].into_iter().collect(),
            );
            // The model: every token issued, with its id, secret, the time it stops
            // verifying (None: never by time) and whether it is still in the list.
            struct Model { id: String, secret: String, until: Option<u64>, listed: bool }
            let mut issued: Vec<Model> = Vec::new();
            let mut now = 1_700_000_000;
            for (op, step) in ops {
                now += step;
                match op {
                    Op::Rotate => {
                        let fresh = service.rotate("deploy", now).expect("rotate");
                        for t in issued.iter_mut().filter(|t| t.listed) {
                            let live = t.until.is_none_or(|u| now < u);
                            let grace_end = now + 100;
                            t.until = Some(t.until.map_or(grace_end, |u| u.min(grace_end)));
                            t.listed = live && t.until.is_some_and(|u| now < u);
                        }
                        issued.push(Model {
                            id: fresh.id,
                            secret: fresh.secret,
                            until: lifetime.map(|l| now + l),
                            listed: true,
                        });
                        let listed: Vec<usize> = (0..issued.len()).filter(|&i| issued[i].listed).collect();
                        for &i in listed.iter().take(listed.len().saturating_sub(3)) {
                            issued[i].listed = false;
                        }
                    }
                    Op::Verify(n) if n < issued.len() => {
                        let t = &issued[n];
                        let want = t.listed && t.until.is_none_or(|u| now < u);
                        let got = service.verify("deploy", &t.secret, now).expect("verify");
                        proptest::prop_assert_eq!(got, want, "token {} at {}", n, now);
                    }
                    Op::Revoke(n) if n < issued.len() => {
                        let t = &issued[n];
                        let want = usize::from(t.listed);
                        let got = service.revoke("deploy", &t.id, now).expect("revoke");
                        proptest::prop_assert_eq!(got, want, "revoke {}", n);
                        issued[n].listed = false;
                    }
                    Op::RevokeAll => {
                        let want = issued.iter().filter(|t| t.listed).count();
                        let got = service.revoke("deploy", "all", now).expect("revoke all");
                        proptest::prop_assert_eq!(got, want, "revoke all");
                        for t in &mut issued {
                            t.listed = false;
                        }
                    }
                    Op::Verify(_) | Op::Revoke(_) => {}
                }
            }
        }
    }
}
