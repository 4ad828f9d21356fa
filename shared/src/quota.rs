//! The host's outgoing mail quota. Shared hosts cap outgoing mail (often 20–250 messages
//! an hour) and bounce or block the account past it, so every send first reserves a place
//! under `mail.max_per_hour` and `mail.max_per_day`. Past the budget a message simply
//! stays in the spool and goes out when a place frees; it is never lost and the quota is
//! never exceeded, even by concurrent senders: the send times live in
//! `var/state/mail-quota.toml`, changed only under the lock `mailquota`.
//!
//! This module only counts; it never sends and never touches the spool.

use crate::error::Result;
use crate::lock::{LockKey, LockRunner};
use crate::state::{self, TriggerReason, Validate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The stored send times (Unix seconds) of the last 24 hours.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sent {
    /// One entry per reserved send.
    pub at: Vec<u64>,
}

impl Validate for Sent {
    fn validate(&self, now: u64) -> std::result::Result<(), String> {
        if self.at.iter().any(|&t| t > now + state::CLOCK_SLACK) {
            return Err("a send time lies in the future".into());
        }
        Ok(())
    }
}

/// Whether a send may happen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A place is reserved: send.
    Reserved,
    /// Over the budget; a place frees at this Unix time.
    Over {
        /// When the next place frees.
        free_at: u64,
    },
}

/// The decision policy: pure. `None` limits mean no limit.
pub fn decide(sent: &[u64], now: u64, per_hour: Option<u32>, per_day: Option<u32>) -> Verdict {
    let mut free_at = None::<u64>;
    for (limit, span) in [(per_hour, 3600u64), (per_day, 86_400u64)] {
        let Some(limit) = limit else { continue };
        let mut inside: Vec<u64> = sent.iter().copied().filter(|&t| t + span > now).collect();
        if inside.len() >= limit as usize {
            inside.sort_unstable();
            // The place frees when enough of the oldest sends leave the window.
            let k = inside.len() + 1 - limit as usize;
            let at = inside[k - 1] + span;
            free_at = Some(free_at.map_or(at, |f| f.max(at)));
        }
    }
    match free_at {
        Some(free_at) => Verdict::Over { free_at },
        None => Verdict::Reserved,
    }
}

/// The quota over one runtime tree.
#[derive(Debug, Clone)]
pub struct Quota {
    path: PathBuf,
    locks: LockRunner,
    per_hour: Option<u32>,
    per_day: Option<u32>,
}

impl Quota {
    /// A quota stored at `path`; `None` limits mean unlimited.
    pub fn new(
        path: PathBuf,
        locks: LockRunner,
        per_hour: Option<u32>,
        per_day: Option<u32>,
    ) -> Self {
        Quota {
            path,
            locks,
            per_hour,
            per_day,
        }
    }

    /// Reserves a place for one send now, or says when one frees. Without limits it
    /// touches nothing.
    pub fn reserve(&self, now: u64) -> Result<Verdict> {
        if self.per_hour.is_none() && self.per_day.is_none() {
            return Ok(Verdict::Reserved);
        }
        self.locks.run(&LockKey::new("mailquota"), || {
            let mut sent = state::read_or_reset::<Sent>(&self.path, now, TriggerReason::MailRetry)?
                .unwrap_or_default();
            sent.at.retain(|&t| t + 86_400 > now);
            let verdict = decide(&sent.at, now, self.per_hour, self.per_day);
            if verdict == Verdict::Reserved {
                sent.at.push(now);
                state::write(&self.path, &sent)?;
            }
            Ok(verdict)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_per_hour_and_day_free_up_with_the_oldest_send() {
        assert_eq!(decide(&[], 100, Some(2), None), Verdict::Reserved);
        assert_eq!(
            decide(&[10, 20], 100, Some(2), None),
            Verdict::Over { free_at: 3610 }
        );
        assert_eq!(decide(&[10, 20], 3615, Some(2), None), Verdict::Reserved);
        assert_eq!(
            decide(&[10, 5000, 9000], 9100, Some(10), Some(3)),
            Verdict::Over { free_at: 86_410 }
        );
        assert_eq!(decide(&[1; 50], 2, None, None), Verdict::Reserved);
    }
}
