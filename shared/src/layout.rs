//! Where the runtime tree lives and what each folder in it is for. This module owns the
//! mapping from concepts (lock directory, spool, token lists) to paths, and the search for
//! the runtime root. It never opens or writes a state file itself: `atomic`, `state` and
//! `lock` do that.

use std::path::{Path, PathBuf};

/// The one environment variable that names the runtime root (the folder that contains
/// `var/`). Web servers set it with `SetEnv` (Apache) or `fastcgi_param` (nginx). It is not
/// reachable from a visitor: request headers only ever become `HTTP_*` variables.
pub const ROOT_ENV: &str = "FORMWARDEN_ROOT";

/// How many folders above the executable we look for `var/config/`. Three covers the usual
/// shapes: `root/cgi-bin/x.cgi`, `root/public_html/cgi-bin/x.cgi` and `target/release/x`.
const SEARCH_DEPTH: usize = 3;

/// The runtime tree under one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout over `root` (the folder holding `var/`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// Finds the runtime root: `FORMWARDEN_ROOT` when set, otherwise the nearest folder at
    /// or above the executable's own folder that holds `var/config/`. Returns `None` when
    /// neither exists, so the caller can tell the operator exactly what is missing.
    pub fn discover(env_root: Option<&str>, exe: Option<&Path>) -> Option<Layout> {
        if let Some(root) = env_root.filter(|r| !r.is_empty()) {
            return Some(Layout::new(root));
        }
        let mut dir = exe?.parent()?;
        for _ in 0..=SEARCH_DEPTH {
            if crate::fsio::is_dir(&dir.join("var").join("config")) {
                return Some(Layout::new(dir));
            }
            dir = dir.parent()?;
        }
        None
    }

    /// The root folder (parent of `var/`).
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `var/`.
    pub fn var(&self) -> PathBuf {
        self.root.join("var")
    }
    /// `var/config/config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.var().join("config").join("config.toml")
    }
    /// `var/config/`, where operator templates may live.
    pub fn config_dir(&self) -> PathBuf {
        self.var().join("config")
    }
    /// `var/tmp/sweep.toml`: where the sweep goes on next (`sweep`).
    pub fn sweep_marker(&self) -> PathBuf {
        self.tmp_dir().join("sweep.toml")
    }
    /// `var/state/mail-quota.toml`: the sends counted against the host's quota (`quota`).
    pub fn mail_quota_file(&self) -> PathBuf {
        self.var().join("state").join("mail-quota.toml")
    }
    /// `var/lock/`.
    pub fn lock_dir(&self) -> PathBuf {
        self.var().join("lock")
    }
    /// `var/tmp/captcha/`.
    pub fn captcha_dir(&self) -> PathBuf {
        self.var().join("tmp").join("captcha")
    }
    /// `var/tmp/ratelimit/`.
    pub fn ratelimit_dir(&self) -> PathBuf {
        self.var().join("tmp").join("ratelimit")
    }
    /// `var/tmp/`, home of the sweep marker.
    pub fn tmp_dir(&self) -> PathBuf {
        self.var().join("tmp")
    }
    /// `var/state/tokens/`.
    pub fn tokens_dir(&self) -> PathBuf {
        self.var().join("state").join("tokens")
    }
    /// `var/spool/`, the root of the mail spool (`new/`, `failed/`, `sent/`).
    pub fn spool_dir(&self) -> PathBuf {
        self.var().join("spool")
    }
    /// Creates every folder the runtime writes to (cheap when they exist).
    pub fn create_state_dirs(&self) -> crate::Result<()> {
        for dir in self.state_dirs() {
            crate::fsio::create_dir_all(&dir)
                .map_err(|e| crate::Error::io("create folder", &dir, e))?;
        }
        Ok(())
    }

    /// Every folder the runtime writes to, in creation order.
    pub fn state_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.lock_dir(),
            self.captcha_dir(),
            self.ratelimit_dir(),
            self.tokens_dir(),
            self.spool_dir().join("new"),
            self.spool_dir().join("failed"),
            self.spool_dir().join("sent"),
            self.spool_dir().join("quarantine"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_root_wins_over_the_executable_location() {
        let l = Layout::discover(Some("/srv/fw"), Some(Path::new("/x/y/z"))).map(|l| l.root);
        assert_eq!(l, Some(PathBuf::from("/srv/fw")));
    }

    #[test]
    fn root_is_found_above_the_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("var/config")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("public/cgi-bin")).expect("mkdir");
        let exe = dir.path().join("public/cgi-bin/contact.cgi");
        let found = Layout::discover(None, Some(&exe)).map(|l| l.root);
        assert_eq!(found, Some(dir.path().to_path_buf()));
        assert!(Layout::discover(None, Some(Path::new("/nonexistent/a/b/c/d/e"))).is_none());
    }
}
