//! The rate limiter: a fixed window per hashed client key, with separate budgets for
//! CAPTCHA fetches and contact posts. One file per client key under `var/tmp/ratelimit/`,
//! changed only under the lock `ratelimit_{key}` (or, with the Redis store, one key of that
//! name that lives until its window ends). Only admitted requests are counted, so
//! the stored counter always equals the number of requests let through in the window. This
//! module never sees a raw client address: it gets the hashed key.

use crate::error::Result;
use crate::lock::{LockKey, LockRunner};
use crate::state::{self, TriggerReason, Validate};
use crate::store::{Change, Expiry, Store};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which budget a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// CAPTCHA image fetches (`captcha_max_get`).
    CaptchaGet,
    /// Contact form posts (`contact_max_post`).
    ContactPost,
}

/// One client's window, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Unix time the window opened.
    pub window_start: u64,
    /// Admitted CAPTCHA fetches in this window.
    pub captcha_get: u32,
    /// Admitted contact posts in this window.
    pub contact_post: u32,
}

impl Validate for Window {
    fn validate(&self, now: u64) -> std::result::Result<(), String> {
        if self.window_start > now + state::CLOCK_SLACK {
            return Err(format!(
                "window_start {} lies in the future",
                self.window_start
            ));
        }
        Ok(())
    }
}

/// The limits that apply.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Budget for CAPTCHA fetches per window.
    pub captcha_max_get: u32,
    /// Budget for contact posts per window.
    pub contact_max_post: u32,
    /// Window length in seconds.
    pub window_seconds: u64,
    /// Ceiling on stored windows (see [`RateLimiter::hit`]).
    pub max_windows: usize,
}

/// What the decision policy says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionPlan {
    /// Let it through and store this window.
    Admit(Window),
    /// Refuse it; the window frees up after this many seconds.
    Refuse {
        /// Seconds until the window ends.
        retry_after: u64,
    },
}

/// The answer to a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `remaining` more are allowed in this window.
    Admitted {
        /// Requests left in the window.
        remaining: u32,
    },
    /// Over the budget; try again after this many seconds.
    Limited {
        /// Seconds until the window ends.
        retry_after: u64,
    },
}

/// The decision policy: pure, so it can be tested without files.
pub fn decide(current: Option<&Window>, bucket: Bucket, limits: &Limits, now: u64) -> ActionPlan {
    let mut w = match current {
        Some(w) if now < w.window_start.saturating_add(limits.window_seconds) => w.clone(),
        // No window yet, or the old one is over: a new window opens now.
        _ => Window {
            window_start: now,
            ..Window::default()
        },
    };
    let (count, max) = match bucket {
        Bucket::CaptchaGet => (&mut w.captcha_get, limits.captcha_max_get),
        Bucket::ContactPost => (&mut w.contact_post, limits.contact_max_post),
    };
    if *count >= max {
        let end = w.window_start.saturating_add(limits.window_seconds);
        return ActionPlan::Refuse {
            retry_after: end.saturating_sub(now).max(1),
        };
    }
    *count += 1;
    ActionPlan::Admit(w)
}

/// The rate limiter over one runtime tree.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    dir: PathBuf,
    locks: LockRunner,
    limits: Limits,
    store: Store,
}

impl RateLimiter {
    /// A limiter storing windows in `dir`.
    pub fn new(dir: impl Into<PathBuf>, locks: LockRunner, limits: Limits) -> Self {
        RateLimiter {
            dir: dir.into(),
            locks,
            limits,
            store: Store::Files,
        }
    }

    /// The same limiter keeping its windows in `store` instead.
    pub fn with_store(self, store: Store) -> Self {
        RateLimiter { store, ..self }
    }

    /// The answer for an admitted request whose window is now `w`.
    fn admitted(&self, w: &Window, bucket: Bucket) -> Verdict {
        let (used, max) = match bucket {
            Bucket::CaptchaGet => (w.captcha_get, self.limits.captcha_max_get),
            Bucket::ContactPost => (w.contact_post, self.limits.contact_max_post),
        };
        Verdict::Admitted {
            remaining: max.saturating_sub(used),
        }
    }

    /// [`RateLimiter::hit`] on the Redis store: the same decision, applied atomically on
    /// the server. There is no ceiling and no sweep: a window's key expires when the
    /// window ends.
    fn hit_shared(
        &self,
        redis: &crate::store::redis::RedisStore,
        client_key: &str,
        bucket: Bucket,
        now: u64,
        trigger: TriggerReason,
    ) -> Result<Verdict> {
        let key = LockKey::ratelimit(client_key);
        redis.update(&key, now, trigger, |current: Option<&Window>| match decide(
            current,
            bucket,
            &self.limits,
            now,
        ) {
            ActionPlan::Refuse { retry_after } => (Change::Keep, Verdict::Limited { retry_after }),
            ActionPlan::Admit(w) => {
                let verdict = self.admitted(&w, bucket);
                let end = w.window_start.saturating_add(self.limits.window_seconds);
                (
                    Change::Put(w, Expiry::After(end.saturating_sub(now))),
                    verdict,
                )
            }
        })
    }

    /// The file that holds `client_key`'s window, in its shard (see `shard`). The key is
    /// a hex digest, so it is a safe file name; anything else is normalized the same way
    /// lock keys are.
    pub fn path_of(&self, client_key: &str) -> PathBuf {
        let safe = LockKey::new(client_key);
        crate::shard::path(&self.dir, safe.as_str(), ".toml")
    }

    /// Counts one request of `bucket` for `client_key`, under `ratelimit_{key}`. A client
    /// without a window first makes room for it under the ceiling (outside its own lock,
    /// so the critical section stays short).
    pub fn hit(&self, client_key: &str, bucket: Bucket, now: u64) -> Result<Verdict> {
        let trigger = match bucket {
            Bucket::CaptchaGet => TriggerReason::CaptchaGet,
            Bucket::ContactPost => TriggerReason::ContactPost,
        };
        if let Some(redis) = self.store.redis() {
            return self.hit_shared(redis, client_key, bucket, now, trigger);
        }
        let path = self.path_of(client_key);
        if !state::exists(&path)? {
            self.make_room(&path)?;
        }
        // The temp file is made before the lock is taken; only a refused request drops it
        // unused (after the lock is released).
        let staged = crate::atomic::stage(&path)?;
        let (verdict, unused) = self.locks.run(&LockKey::ratelimit(client_key), || {
            let current = state::read_or_reset::<Window>(&path, now, trigger)?;
            match decide(current.as_ref(), bucket, &self.limits, now) {
                ActionPlan::Refuse { retry_after } => {
                    Ok((Verdict::Limited { retry_after }, Some(staged)))
                }
                ActionPlan::Admit(w) => {
                    state::commit_staged(staged, &path, &w)?;
                    Ok((self.admitted(&w, bucket), None))
                }
            }
        })?;
        drop(unused);
        Ok(verdict)
    }

    /// The ceiling policy: when the shard that a new window goes into already holds its
    /// share of `max_windows`, the windows that were hit least recently are evicted
    /// (stale ones first, since they are the oldest). An evicted client starts a fresh
    /// window: the cost of a flood of distinct clients is paid by the flood's own oldest
    /// entries, and the disk never fills.
    fn make_room(&self, new: &Path) -> Result<()> {
        let Some(dir) = new.parent() else {
            return Ok(());
        };
        let mut listed = state::list(dir, ".toml")?;
        let share = self.limits.max_windows.div_ceil(crate::shard::COUNT);
        if listed.len() < share {
            return Ok(());
        }
        listed.sort_by_cached_key(state::Listed::modified);
        let excess = listed.len() + 1 - share;
        let mut evicted = 0;
        for l in &listed {
            if evicted == excess {
                break;
            }
            let gone = self.locks.remove_if(&LockKey::ratelimit(&l.stem), || {
                crate::atomic::remove(&l.path)?;
                Ok(true)
            })?;
            evicted += usize::from(gone);
        }
        tracing::warn!(
            evicted,
            max_windows = self.limits.max_windows,
            "rate-limit windows at their ceiling: evicted the least recently active"
        );
        Ok(())
    }

    /// Removes windows that ended before `now` in shard `shard`, each under its own lock,
    /// unlinking the lock file too (the key has no state left); busy keys are skipped. At
    /// most `budget` windows are looked at (only those whose file is old enough to have
    /// ended); returns how many went and whether the budget ran out.
    pub fn sweep_shard(&self, shard: usize, now: u64, budget: usize) -> Result<(usize, bool)> {
        let dir = self.dir.join(crate::shard::name(shard));
        let mut removed = 0;
        let mut looked = 0;
        for l in state::list(&dir, ".toml")? {
            // A window starts at or before its last write, so a file written within the
            // last window length cannot have ended yet.
            if l.modified().saturating_add(self.limits.window_seconds) > now {
                continue;
            }
            if looked == budget {
                return Ok((removed, true));
            }
            looked += 1;
            let window = self.limits.window_seconds;
            let gone = self.locks.remove_if(&LockKey::ratelimit(&l.stem), || {
                let stale = match state::read::<Window>(&l.path, now)? {
                    state::Loaded::Valid(w) => now >= w.window_start.saturating_add(window),
                    state::Loaded::Missing => true,
                    state::Loaded::Invalid(reason) => {
                        state::reset(&l.path, &reason, TriggerReason::Sweep)?;
                        true
                    }
                };
                if stale {
                    crate::atomic::remove(&l.path)?;
                }
                Ok(stale)
            })?;
            removed += usize::from(gone);
        }
        Ok((removed, false))
    }

    /// True when `client_key` has a window on disk (for the orphan-lock sweep).
    pub fn has_window(&self, client_key: &str) -> Result<bool> {
        state::exists(&self.path_of(client_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        captcha_max_get: 2,
        contact_max_post: 1,
        window_seconds: 60,
        max_windows: 1000,
    };

    #[test]
    fn budgets_are_separate_and_windows_roll_over() {
        let a = decide(None, Bucket::CaptchaGet, &L, 100);
        let ActionPlan::Admit(w) = a else {
            panic!("first get admitted")
        };
        let ActionPlan::Admit(w) = decide(Some(&w), Bucket::CaptchaGet, &L, 101) else {
            panic!("second get")
        };
        assert_eq!(
            decide(Some(&w), Bucket::CaptchaGet, &L, 102),
            ActionPlan::Refuse { retry_after: 58 }
        );
        let ActionPlan::Admit(w2) = decide(Some(&w), Bucket::ContactPost, &L, 103) else {
            panic!("post has its own budget")
        };
        assert_eq!(w2.contact_post, 1);
        let ActionPlan::Admit(w3) = decide(Some(&w2), Bucket::CaptchaGet, &L, 160) else {
            panic!("new window")
        };
        assert_eq!(
            (w3.window_start, w3.captcha_get, w3.contact_post),
            (160, 1, 0)
        );
    }

    #[test]
    fn future_windows_are_invalid() {
        let w = Window {
            window_start: 10_000,
            ..Window::default()
        };
        assert!(w.validate(100).is_err());
        assert!(w.validate(10_000).is_ok());
    }

    /// The plain model of the limiter: per client, when its window opened and what it has
    /// used of each budget.
    #[derive(Default)]
    struct Model {
        windows: std::collections::HashMap<usize, (u64, u32, u32)>,
    }

    impl Model {
        fn hit(&mut self, client: usize, post: bool, now: u64) -> Verdict {
            let w = self.windows.entry(client).or_insert((now, 0, 0));
            if now >= w.0 + L.window_seconds {
                *w = (now, 0, 0);
            }
            let (used, max) = if post {
                (&mut w.2, L.contact_max_post)
            } else {
                (&mut w.1, L.captcha_max_get)
            };
            if *used < max {
                *used += 1;
                Verdict::Admitted {
                    remaining: max - *used,
                }
            } else {
                Verdict::Limited {
                    retry_after: (w.0 + L.window_seconds - now).max(1),
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::model_testing::cases())]

        /// Random requests of three clients, with time moving forward by 0 to 40 s (the
        /// window is 60 s, so windows end in the middle of sequences): the limiter on real
        /// files answers every request as the model does, and the stored counters are the
        /// model's.
        #[test]
        fn the_limiter_on_files_answers_like_the_plain_model(
            ops in proptest::collection::vec((0usize..3, proptest::bool::ANY, 0u64..40), 1..80)
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let locks = crate::model_testing::locks(dir.path());
            let limiter = RateLimiter::new(dir.path().join("ratelimit"), locks, L);
            let mut model = Model::default();
            let mut now = 1_700_000_000;
            let key = |c: usize| format!("{c:064x}");
            for (client, post, step) in ops {
                now += step;
                let bucket = if post { Bucket::ContactPost } else { Bucket::CaptchaGet };
                let got = limiter.hit(&key(client), bucket, now).expect("hit");
                proptest::prop_assert_eq!(got, model.hit(client, post, now));
            }
            for (client, (start, get, post)) in &model.windows {
                let stored: Window = match state::read(&limiter.path_of(&key(*client)), now)
                    .expect("read")
                {
                    state::Loaded::Valid(w) => w,
                    other => panic!("client {client}: {other:?}"),
                };
                proptest::prop_assert_eq!(
                    (stored.window_start, stored.captcha_get, stored.contact_post),
                    (*start, *get, *post)
                );
            }
        }
    }
}
