//! Delivery of spooled messages: the first attempt right after a contact POST, and the
//! retry run for cron. Each message is claimed under its lock `spool_{id}` and re-read
//! under that lock before it is sent, so two senders (a POST and a retry run, or two retry
//! runs) never deliver one message twice: whoever comes second finds the key busy or the
//! message gone. A message leaves `spool/new/` only when it was delivered (then it is
//! removed or archived in `sent/`) or when it gave up (then it moves to `failed/`, with a
//! log line); nothing is dropped silently.
//!
//! The one gap that remains is a crash between the server's acceptance and the removal of
//! the spool file: the message is then sent again by the next retry (at least once, never
//! lost). Its `Message-ID` stays the same, so mail clients recognise the duplicate.

use crate::error::Result;
use crate::lock::LockKey;
use crate::lock::LockRunner;
use crate::mail::{self, MailConfig, SendError};
use crate::quota::Quota;
use crate::spool::Spool;
use crate::spool::{Folder, Message};
use std::path::Path;
use std::time::Duration;

/// What delivery works with: the lock runner, the spool, the host's mail quota, the mail
/// settings and the runtime root (for a relative file-transport folder). `App::delivery`
/// lends it; delivery needs nothing else of the runtime tree.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The one lock runner (the `spool_{id}` try-locks).
    pub locks: &'a LockRunner,
    /// The spool.
    pub spool: &'a Spool,
    /// The host's outgoing quota.
    pub quota: &'a Quota,
    /// `[mail]`.
    pub mail: &'a MailConfig,
    /// The runtime root.
    pub root: &'a Path,
}

/// Longest wait between two attempts of one message.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Delivered and taken out of `new/`.
    Delivered,
    /// Not delivered; stays in `new/` for a later retry.
    Deferred(String),
    /// Gave up; moved to `failed/`.
    Failed(String),
    /// Another sender holds it right now.
    Busy,
    /// Not due yet (backoff) or already gone.
    Skipped,
    /// Delivered, but it could not be taken out of `new/` (that folder cannot be written):
    /// a later retry sends it again (at least once, never lost).
    SentNotCleared(String),
}

/// Totals of one retry run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetryReport {
    /// Messages delivered.
    pub delivered: usize,
    /// Messages that stay for later.
    pub deferred: usize,
    /// Messages moved to `failed/`.
    pub failed: usize,
    /// Messages another sender was handling.
    pub busy: usize,
    /// Messages not due yet.
    pub waiting: usize,
    /// Entries that could not be handled because of an error (logged with their id): an
    /// unreadable file, a folder with a message's name, a failing disk. They stay where
    /// they are, and the run goes on with the next one.
    pub errors: usize,
}

fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The decision policy for a message that is due: give up, or try.
fn give_up_reason(d: &Delivery<'_>, msg: &Message, now: u64) -> Option<String> {
    let cfg = d.mail;
    if msg.attempts >= cfg.max_attempts {
        return Some(format!(
            "{} attempts made; last error: {}",
            msg.attempts, msg.last_error
        ));
    }
    if now.saturating_sub(msg.received_at.max(msg.requeued_at)) > cfg.max_age.as_secs() {
        return Some(format!(
            "older than {} hours; last error: {}",
            cfg.max_age.as_secs() / 3600,
            msg.last_error
        ));
    }
    None
}

/// Handles one message in `new/`: claim, re-read, decide, send, record. `due_only` makes
/// the retry run respect the backoff; the POST's first attempt ignores it.
fn handle(d: &Delivery<'_>, id: &str, now: u64, due_only: bool) -> Result<DeliveryOutcome> {
    let Some(guard) = d.locks.try_acquire(&LockKey::spool(id))? else {
        return Ok(DeliveryOutcome::Busy);
    };
    let spool = &d.spool;
    let mut msg = match spool.load(Folder::New, id, now)? {
        None => {
            // Delivered (or failed) by someone else between our listing and our lock.
            guard.release_and_unlink()?;
            return Ok(DeliveryOutcome::Skipped);
        }
        Some(Err(reason)) => {
            // The reset executor's rule for the spool: never delete a message, park it.
            tracing::error!(id, reason, "spool entry unreadable: moved to failed/");
            spool.move_to(id, Folder::New, Folder::Failed)?;
            guard.release_and_unlink()?;
            return Ok(DeliveryOutcome::Failed(reason));
        }
        Some(Ok(m)) => m,
    };
    if due_only && msg.next_attempt_at > now {
        return Ok(DeliveryOutcome::Skipped);
    }
    if let Some(reason) = give_up_reason(d, &msg, now) {
        tracing::error!(id, reason, "delivery given up: moved to failed/");
        spool.move_to(id, Folder::New, Folder::Failed)?;
        guard.release_and_unlink()?;
        return Ok(DeliveryOutcome::Failed(reason));
    }
    if let crate::quota::Verdict::Over { free_at } = d.quota.reserve(now)? {
        // Not an attempt: the message waits for a place under the host's quota.
        msg.next_attempt_at = free_at;
        msg.last_error = format!("waiting for the mail quota until {free_at}");
        spool.update(Folder::New, &msg)?;
        tracing::warn!(
            id,
            free_at,
            "mail quota reached: the message stays in the spool"
        );
        // Like a backoff: waiting, not a failure (cron's exit code stays 0).
        return Ok(DeliveryOutcome::Skipped);
    }
    let result = mail::build(d.mail, &msg).and_then(|m| mail::send(d.mail, d.root, id, &m));
    match result {
        Ok(()) => {
            tracing::info!(id, attempts = msg.attempts + 1, "message delivered");
            let cleared = clear_delivered(d, id);
            // Sent: nothing after this may count as an error before the send, or a retry
            // step would go on to send another. A lock file left behind is swept later.
            if let Err(e) = guard.release_and_unlink() {
                tracing::warn!(id, error = %e, "claim lock file not removed");
            }
            Ok(match cleared {
                Ok(()) => DeliveryOutcome::Delivered,
                Err(e) => {
                    tracing::error!(id, error = %e, "delivered, but it could not be taken out of new/: a later retry sends it again");
                    DeliveryOutcome::SentNotCleared(e.to_string())
                }
            })
        }
        Err(e) => {
            msg.attempts += 1;
            msg.last_error = e.to_string();
            msg.next_attempt_at = now + backoff(d.mail.retry_backoff, msg.attempts).as_secs();
            let permanent = matches!(e, SendError::Permanent(_));
            if msg.attempts >= d.mail.max_attempts {
                spool.update(Folder::New, &msg)?;
                spool.move_to(id, Folder::New, Folder::Failed)?;
                tracing::error!(id, attempts = msg.attempts, error = %e, "delivery given up: moved to failed/");
                guard.release_and_unlink()?;
                return Ok(DeliveryOutcome::Failed(msg.last_error));
            }
            spool.update(Folder::New, &msg)?;
            tracing::warn!(id, attempts = msg.attempts, permanent, error = %e, "delivery deferred: message stays in the spool");
            Ok(DeliveryOutcome::Deferred(msg.last_error))
        }
    }
}

/// Takes a delivered message out of `new/`: into `sent/` when copies are kept, else away.
/// When the copy cannot be filed (`sent/` unwritable, or on another file system), the
/// message is removed all the same: a missing copy is better than a message that every
/// retry sends again.
fn clear_delivered(d: &Delivery<'_>, id: &str) -> Result<()> {
    let spool = &d.spool;
    if d.mail.keep_sent > 0 {
        match spool.move_to(id, Folder::New, Folder::Sent) {
            Ok(()) => {
                if let Err(e) = spool.trim_sent(d.mail.keep_sent) {
                    tracing::warn!(error = %e, "old copies in sent/ could not be trimmed");
                }
                return Ok(());
            }
            Err(e) => tracing::error!(
                id,
                error = %e,
                "delivered, but no copy could be kept in sent/: removed from new/ without one"
            ),
        }
    }
    spool.remove(Folder::New, id)
}

/// Tries to deliver the message the contact POST just spooled. `true` when it went out;
/// `false` means it is safely in the spool for the retry run.
pub fn deliver_fresh(d: &Delivery<'_>, id: &str, now: u64) -> bool {
    match handle(d, id, now, false) {
        Ok(DeliveryOutcome::Delivered | DeliveryOutcome::SentNotCleared(_)) => true,
        Ok(_) => false,
        Err(e) => {
            tracing::error!(id, error = %e, "delivery attempt failed; the message stays in the spool");
            false
        }
    }
}

/// Handles one message for a retry run or step. An error is logged with the message's id
/// and becomes `None` instead of ending the run: the oldest entry comes first, so one that
/// can never be read (a folder with a message's name, a file without read permission)
/// would otherwise stop every message behind it, on every run, for good.
fn handle_logged(d: &Delivery<'_>, id: &str, now: u64) -> Option<DeliveryOutcome> {
    handle(d, id, now, true)
        .inspect_err(|e| {
            tracing::error!(id, error = %e, "spool entry could not be handled; it stays where it is");
        })
        .ok()
}

/// The retry run: every due message in `new/`, oldest first. Busy messages are left to the
/// sender that holds them; an entry that fails with an error is logged and passed over.
pub fn retry(d: &Delivery<'_>, now: u64) -> Result<RetryReport> {
    let mut report = RetryReport::default();
    for id in d.spool.ids(Folder::New)? {
        let Some(outcome) = handle_logged(d, &id, now) else {
            report.errors += 1;
            continue;
        };
        match outcome {
            DeliveryOutcome::Delivered => report.delivered += 1,
            DeliveryOutcome::Deferred(_) => report.deferred += 1,
            DeliveryOutcome::Failed(_) => report.failed += 1,
            DeliveryOutcome::Busy => report.busy += 1,
            DeliveryOutcome::Skipped => report.waiting += 1,
            DeliveryOutcome::SentNotCleared(_) => {
                // `new/` cannot be written: every further message would go out and stay
                // there too, to be sent again by the next run. Stop here.
                report.delivered += 1;
                report.errors += 1;
                break;
            }
        }
    }
    tracing::info!(?report, "retry run done");
    Ok(report)
}

/// Messages a retry step looks at, at most (due or not).
const STEP_LOOKS: usize = 16;

/// One bounded retry step, for hosts without cron: run by a visitor's request after its
/// answer is complete (`handler::after_answer`), so the visitor never waits for it. At most
/// one step runs at a time (the `retry_step` key, taken without waiting), it looks at no
/// more than [`STEP_LOOKS`] messages and sends at most one, under that message's claim
/// lock like every delivery. `None`: another step runs, or nothing is spooled.
pub fn retry_step(d: &Delivery<'_>, now: u64) -> Result<Option<RetryReport>> {
    let ids = d.spool.ids(Folder::New)?;
    if ids.is_empty() {
        return Ok(None);
    }
    let Some(_guard) = d.locks.try_acquire(&LockKey::new("retry_step"))? else {
        return Ok(None);
    };
    let mut report = RetryReport::default();
    for id in ids.iter().take(STEP_LOOKS) {
        let Some(outcome) = handle_logged(d, id, now) else {
            // Passed over like a message that is not due: it counts as a look, so a step
            // stays bounded however many entries are broken.
            report.errors += 1;
            continue;
        };
        match outcome {
            DeliveryOutcome::Delivered => report.delivered += 1,
            DeliveryOutcome::SentNotCleared(_) => {
                report.delivered += 1;
                report.errors += 1;
            }
            DeliveryOutcome::Deferred(_) => report.deferred += 1,
            DeliveryOutcome::Failed(_) => report.failed += 1,
            DeliveryOutcome::Busy => {
                report.busy += 1;
                continue;
            }
            DeliveryOutcome::Skipped => {
                report.waiting += 1;
                continue;
            }
        }
        break;
    }
    Ok(Some(report))
}

/// What one requeue did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requeued {
    /// Messages moved back to `new/`.
    pub moved: usize,
    /// Messages another process held at the moment (a run again takes them).
    pub busy: usize,
    /// Ids in `failed/` that could not be read or moved (each logged with the reason);
    /// they stay where they are, and a requeue of all goes on past them.
    pub unreadable: Vec<String>,
    /// Messages of `failed/` not looked at because of the `max` of this call.
    pub left: usize,
}

/// Moves `id` (or every message with `"all"`, at most `max` of them, oldest first) from
/// `failed/` back to `new/` with fresh counters, so the next retry run tries again. The
/// endpoint passes a `max` so that one request stays short; the command line none.
pub fn requeue(d: &Delivery<'_>, id: &str, now: u64, max: usize) -> Result<Requeued> {
    let ids = if id == "all" {
        // The listing holds only valid ids (`Spool::ids`).
        d.spool.ids(Folder::Failed)?
    } else if crate::spool::is_valid_id(id) {
        vec![id.to_string()]
    } else {
        return Err(crate::Error::InvalidInput {
            what: "spool id",
            detail: id.to_string(),
        });
    };
    let mut done = Requeued {
        left: ids.len().saturating_sub(max),
        ..Requeued::default()
    };
    for id in ids.into_iter().take(max) {
        match requeue_one(d, &id, now) {
            Ok(RequeueOne::Moved) => done.moved += 1,
            Ok(RequeueOne::Busy) => done.busy += 1,
            Ok(RequeueOne::Missing) => {}
            Ok(RequeueOne::Unreadable) => done.unreadable.push(id),
            Err(e) => {
                tracing::error!(id, error = %e, "failed message could not be requeued; it stays where it is");
                done.unreadable.push(id);
            }
        }
    }
    Ok(done)
}

/// What became of one message of a requeue.
enum RequeueOne {
    Moved,
    Busy,
    Missing,
    /// Invalid content (logged); it stays in `failed/` for the operator.
    Unreadable,
}

/// Requeues one message of `failed/` under its claim lock.
fn requeue_one(d: &Delivery<'_>, id: &str, now: u64) -> Result<RequeueOne> {
    let Some(guard) = d.locks.try_acquire(&LockKey::spool(id))? else {
        return Ok(RequeueOne::Busy);
    };
    let done = match d.spool.load(Folder::Failed, id, now)? {
        Some(Ok(mut msg)) => {
            msg.attempts = 0;
            msg.next_attempt_at = now;
            msg.requeued_at = now;
            d.spool.update(Folder::Failed, &msg)?;
            d.spool.move_to(id, Folder::Failed, Folder::New)?;
            tracing::info!(id, "message requeued");
            RequeueOne::Moved
        }
        Some(Err(reason)) => {
            tracing::error!(id, reason, "failed message unreadable: not requeued");
            RequeueOne::Unreadable
        }
        None => RequeueOne::Missing,
    };
    drop(guard);
    Ok(done)
}

/// What became of a quarantined message the operator acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Moved to `new/` and sent.
    Delivered,
    /// Moved to `new/`; the send failed, so the retry run (or a later request) sends it.
    Queued,
    /// Removed for good.
    Deleted,
    /// No such message in the quarantine.
    NotFound,
    /// Another process holds the message right now; try again.
    Busy,
}

/// Releases quarantined message `id`: back into `new/` with fresh counters (the reasons
/// stay on it for the record), then one delivery attempt at once.
pub fn release(d: &Delivery<'_>, id: &str, now: u64) -> Result<Released> {
    let moved = with_quarantined(d, id, now, |msg| {
        msg.attempts = 0;
        msg.next_attempt_at = now;
        msg.requeued_at = now;
        d.spool.update(Folder::Quarantine, msg)?;
        d.spool.move_to(id, Folder::Quarantine, Folder::New)?;
        tracing::info!(id, "quarantined message released");
        Ok(())
    })?;
    if moved != Released::Delivered {
        return Ok(moved);
    }
    Ok(if deliver_fresh(d, id, now) {
        Released::Delivered
    } else {
        Released::Queued
    })
}

/// Deletes quarantined message `id` (and only from the quarantine).
pub fn delete_quarantined(d: &Delivery<'_>, id: &str, now: u64) -> Result<Released> {
    let done = with_quarantined(d, id, now, |_| {
        d.spool.remove(Folder::Quarantine, id)?;
        tracing::info!(id, "quarantined message deleted");
        Ok(())
    })?;
    Ok(match done {
        Released::Delivered => Released::Deleted,
        other => other,
    })
}

/// Runs `act` on quarantined message `id` under its spool lock. `Delivered` stands for
/// "acted" here; the callers say what the act was.
fn with_quarantined(
    d: &Delivery<'_>,
    id: &str,
    now: u64,
    act: impl FnOnce(&mut crate::spool::Message) -> Result<()>,
) -> Result<Released> {
    if !crate::spool::is_valid_id(id) {
        return Err(crate::Error::InvalidInput {
            what: "spool id",
            detail: id.to_string(),
        });
    }
    let Some(guard) = d.locks.try_acquire(&LockKey::spool(id))? else {
        return Ok(Released::Busy);
    };
    let outcome = match d.spool.load(Folder::Quarantine, id, now)? {
        Some(Ok(mut msg)) => {
            act(&mut msg)?;
            Released::Delivered
        }
        Some(Err(reason)) => {
            return Err(crate::Error::InvalidInput {
                what: "quarantined message",
                detail: format!("{id}: {reason}"),
            });
        }
        None => Released::NotFound,
    };
    drop(guard);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_secs(60);
        assert_eq!(backoff(b, 1), Duration::from_secs(60));
        assert_eq!(backoff(b, 3), Duration::from_secs(240));
        assert_eq!(backoff(b, 40), MAX_BACKOFF);
    }
}
