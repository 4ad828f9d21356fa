//! Sweeping: removes what expires (CAPTCHA challenges, rate-limit windows, their lock
//! files, and `.tmp-*` files left by killed processes). A sweep runs at most every
//! [`INTERVAL`] seconds, triggered by a CAPTCHA request, and only one at a time (it takes
//! the `sweep` lock without waiting). Each removal happens under the key's own lock, so a
//! sweep never races a request. A sweep failure is logged, never shown to a visitor.

use crate::app::App;
use crate::error::{Error, Result};
use crate::lock::LockKey;
use crate::state::{self, Validate};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Seconds between sweeps.
pub const INTERVAL: u64 = 300;

/// Temp files older than this belong to a dead process.
const TEMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// Files in `dir` ending in `suffix`, without temp files. A missing folder is empty.
pub fn entries(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(suffix) && !name.starts_with(crate::atomic::TEMP_PREFIX) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Removes `.tmp-*` files older than an hour from `dir`.
pub fn remove_old_temps(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in rd.flatten() {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(crate::atomic::TEMP_PREFIX));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > TEMP_MAX_AGE);
        if is_temp && old {
            crate::atomic::remove(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    last_sweep: u64,
}

impl Validate for Marker {
    fn validate(&self, now: u64) -> std::result::Result<(), String> {
        if self.last_sweep > now + state::CLOCK_SLACK {
            return Err("last_sweep lies in the future".into());
        }
        Ok(())
    }
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Expired challenges.
    pub challenges: usize,
    /// Stale rate-limit windows.
    pub windows: usize,
    /// Old temp files.
    pub temps: usize,
}

/// Sweeps now, unconditionally (but never twice at once). `None`: another sweep runs.
pub fn run(app: &App, now: u64) -> Result<Option<Swept>> {
    let Some(_guard) = app.locks.try_acquire(&LockKey::sweep())? else {
        return Ok(None);
    };
    let marker = app.layout.tmp_dir().join("sweep.toml");
    state::write_with(
        &marker,
        &Marker { last_sweep: now },
        state::Durability::Ephemeral,
    )?;
    let mut swept = Swept {
        challenges: app.captcha.sweep(now)?,
        windows: app.limiter.sweep(now)?,
        temps: 0,
    };
    for dir in app.layout.state_dirs() {
        swept.temps += remove_old_temps(&dir)?;
    }
    tracing::info!(?swept, "sweep done");
    Ok(Some(swept))
}

/// Sweeps if the last sweep is older than [`INTERVAL`]; errors are logged and swallowed,
/// because a visitor's request must not fail over housekeeping.
pub fn maybe_run(app: &App, now: u64) {
    let marker = app.layout.tmp_dir().join("sweep.toml");
    let due = match state::read::<Marker>(&marker, now) {
        Ok(state::Loaded::Valid(m)) => now >= m.last_sweep + INTERVAL,
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "sweep marker unreadable");
            return;
        }
    };
    if due && let Err(e) = run(app, now) {
        tracing::warn!(error = %e, "sweep failed");
    }
}
