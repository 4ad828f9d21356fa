//! Sweeping: removes what is finished (expired or used CAPTCHA challenges, ended
//! rate-limit windows), lock files whose key has no state left (orphans: a crash between
//! taking a lock and writing), and `.tmp-*` files left by killed processes.
//!
//! A visitor's request never does more than a bounded amount of this: a CAPTCHA request
//! runs at most one *step* every [`STEP_INTERVAL`] seconds, one step visits one of the
//! 256 shards (see `shard`) and looks at no more than [`STEP_BUDGET`] entries of each kind,
//! and the marker `var/tmp/sweep.toml` remembers where the next step goes on. So the work
//! per request is bounded whatever is stored, and a full pass takes 256 steps. The operator
//! command `tokens sweep` runs a full sweep at once. Only one sweep or step runs at a time
//! (the `sweep` lock, taken without waiting), each removal happens under the key's own
//! lock, and a sweep failure is logged, never shown to a visitor.

use crate::app::App;
use crate::error::Result;
use crate::lock::LockKey;
use crate::state::{self, Validate};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Seconds between two sweep steps run by visitors' requests.
pub const STEP_INTERVAL: u64 = 1;

/// Entries of each kind a step looks at, at most.
pub const STEP_BUDGET: usize = 64;

/// Temp files older than this belong to a dead process.
const TEMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// Removes `.tmp-*` files older than an hour from `dir`.
fn remove_old_temps(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(rd) = crate::fsio::read_dir(dir) else {
        return Ok(0);
    };
    for entry in rd.flatten() {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(crate::atomic::TEMP_PREFIX));
        if !is_temp {
            // Only temp files need a stat.
            continue;
        }
        let old = crate::fsio::symlink_metadata(&entry.path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > TEMP_MAX_AGE);
        if old {
            crate::atomic::remove(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Every unsharded folder a killed process can leave a temp file in: the state folders,
/// `var/tmp/` itself (the sweep marker), `var/config/` (the first start writes the config
/// there) and the file transport's folder (each `.eml` is written through a temp file).
/// The crash sweep (tests/crashes.rs) found the last three missing.
fn temp_dirs(app: &App) -> Vec<std::path::PathBuf> {
    let mut dirs = app.layout.state_dirs();
    dirs.push(app.layout.tmp_dir());
    dirs.push(app.layout.config_dir());
    dirs.extend(app.config.mail.transport.file_dir(app.layout.root()));
    dirs
}

/// The sweep marker's stored form; public (hidden) only so that the fuzzer (fuzz/) can run
/// it through `state::parse` like every other state file.
#[doc(hidden)]
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// When the last step ran.
    last_step: u64,
    /// The shard the next step visits.
    next_shard: usize,
}

impl Validate for Marker {
    fn validate(&self, now: u64) -> std::result::Result<(), String> {
        if self.last_step > now + state::CLOCK_SLACK {
            return Err("last_step lies in the future".into());
        }
        if self.next_shard >= crate::shard::COUNT {
            return Err(format!("next_shard {} is not a shard", self.next_shard));
        }
        Ok(())
    }
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Finished challenges.
    pub challenges: usize,
    /// Ended rate-limit windows.
    pub windows: usize,
    /// Lock files without state.
    pub locks: usize,
    /// Old temp files.
    pub temps: usize,
}

impl Swept {
    fn add(&mut self, o: Swept) {
        self.challenges += o.challenges;
        self.windows += o.windows;
        self.locks += o.locks;
        self.temps += o.temps;
    }
}

/// Removes lock files in lock shard `shard` whose CAPTCHA challenge or rate-limit window
/// is gone, each while holding it. Other keys (tokens, spool, sweep) are left alone: their
/// lock files are few and permanent. Returns how many went and whether the budget ran out.
fn sweep_orphan_locks(app: &App, shard: usize, budget: usize) -> Result<(usize, bool)> {
    let dir = app.locks.dir().join(crate::shard::name(shard));
    let mut removed = 0;
    let mut looked = 0;
    for l in state::list(&dir, ".lock")? {
        let has_state = |stem: &str| -> Result<Option<bool>> {
            if let Some(id) = stem.strip_prefix("captcha_") {
                app.captcha.has_challenge(id).map(Some)
            } else if let Some(key) = stem.strip_prefix("ratelimit_") {
                app.limiter.has_window(key).map(Some)
            } else {
                Ok(None)
            }
        };
        if has_state(&l.stem)? != Some(false) {
            continue;
        }
        if looked == budget {
            return Ok((removed, true));
        }
        looked += 1;
        let gone = app.locks.remove_if(&LockKey::new(&l.stem), || {
            Ok(has_state(&l.stem)? == Some(false))
        })?;
        removed += usize::from(gone);
    }
    Ok((removed, false))
}

/// One step over shard `shard`: at most `budget` entries of each kind. Returns what went
/// and whether anything was left over for lack of budget.
fn step(app: &App, shard: usize, now: u64, budget: usize) -> Result<(Swept, bool)> {
    let (challenges, more_c) = app.captcha.sweep_shard(shard, now, budget)?;
    let (windows, more_w) = app.limiter.sweep_shard(shard, now, budget)?;
    let (locks, more_l) = sweep_orphan_locks(app, shard, budget)?;
    let name = crate::shard::name(shard);
    let mut temps = 0;
    for dir in [
        app.layout.captcha_dir(),
        app.layout.ratelimit_dir(),
        app.layout.lock_dir(),
    ] {
        temps += remove_old_temps(&dir.join(&name))?;
    }
    if shard == 0 {
        for dir in temp_dirs(app) {
            temps += remove_old_temps(&dir)?;
        }
    }
    let swept = Swept {
        challenges,
        windows,
        locks,
        temps,
    };
    Ok((swept, more_c || more_w || more_l))
}

/// Sweeps everything now (the operator's `tokens sweep`), but never twice at once.
/// `None`: another sweep runs.
pub fn run(app: &App, now: u64) -> Result<Option<Swept>> {
    let Some(_guard) = app.locks.try_acquire(&LockKey::sweep())? else {
        return Ok(None);
    };
    let mut swept = Swept::default();
    for shard in 0..crate::shard::COUNT {
        swept.add(step(app, shard, now, usize::MAX)?.0);
    }
    tracing::info!(?swept, "sweep done");
    Ok(Some(swept))
}

/// Runs one bounded step when the last one is older than [`STEP_INTERVAL`]; errors are
/// logged and swallowed, because a visitor's request must not fail over housekeeping.
pub fn maybe_run(app: &App, now: u64) {
    let marker = app.layout.sweep_marker();
    let due = |m: &state::Loaded<Marker>| match m {
        state::Loaded::Valid(m) => now >= m.last_step + STEP_INTERVAL,
        _ => true,
    };
    match state::read::<Marker>(&marker, now) {
        Ok(m) if due(&m) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "sweep marker unreadable");
            return;
        }
    }
    let result = (|| -> Result<()> {
        let Some(_guard) = app.locks.try_acquire(&LockKey::sweep())? else {
            return Ok(());
        };
        // Read again under the lock: another request may have just stepped.
        let current = state::read::<Marker>(&marker, now)?;
        if !due(&current) {
            return Ok(());
        }
        let shard = match current {
            state::Loaded::Valid(m) => m.next_shard,
            _ => 0,
        };
        let (swept, more) = step(app, shard, now, STEP_BUDGET)?;
        // A shard with more left than one step's budget is visited again next time.
        let next_shard = if more {
            shard
        } else {
            (shard + 1) % crate::shard::COUNT
        };
        state::write_with(
            &marker,
            &Marker {
                last_step: now,
                next_shard,
            },
            state::Durability::Ephemeral,
        )?;
        if swept != Swept::default() {
            tracing::debug!(shard, ?swept, "sweep step");
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "sweep step failed");
    }
}
