//! The services of one runtime tree, wired together from its config: lock runner, rate
//! limiter, CAPTCHA service, token service and spool. Building an [`App`] is the first
//! thing every invocation does; it fails with a clear error when the runtime root or the
//! config is missing or broken. Services get their folders and lock runner from here and
//! from nowhere else, which is the seam a later shared-store backend would replace.

use crate::captcha::{self, CaptchaService};
use crate::cgi::Request;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::layout::{Layout, ROOT_ENV};
use crate::lock::LockRunner;
use crate::ratelimit::{Limits, RateLimiter};
use crate::spool::Spool;
use crate::tokens::TokenService;

/// Everything an endpoint needs.
#[derive(Debug, Clone)]
pub struct App {
    /// Where the runtime tree is.
    pub layout: Layout,
    /// The validated config.
    pub config: Config,
    /// The one lock runner.
    pub locks: LockRunner,
    /// Per-client rate limits.
    pub limiter: RateLimiter,
    /// CAPTCHA challenges.
    pub captcha: CaptchaService,
    /// Token lists.
    pub tokens: TokenService,
    /// The mail spool.
    pub spool: Spool,
}

impl App {
    /// Opens the runtime tree at `layout`: reads the config and makes sure the state
    /// folders exist.
    pub fn open(layout: Layout) -> Result<App> {
        let config = Config::load(&layout.config_file())?;
        layout.create_state_dirs()?;
        let locks = LockRunner::new(layout.lock_dir(), config.lock_wait, config.lock_poll);
        let limiter = RateLimiter::new(
            layout.ratelimit_dir(),
            locks.clone(),
            Limits {
                captcha_max_get: config.captcha_max_get,
                contact_max_post: config.contact_max_post,
                window_seconds: config.rate_limit_window.as_secs(),
            },
        );
        let captcha = CaptchaService::new(
            layout.captcha_dir(),
            locks.clone(),
            captcha::Settings {
                salt: config.ip_salt.clone(),
                lifetime: config.captcha_lifetime,
                max_attempts: config.captcha_max_attempts,
                length: config.captcha_length,
            },
        );
        let tokens = TokenService::new(
            layout.tokens_dir(),
            locks.clone(),
            config.tokens.profiles.clone(),
        );
        let spool = Spool::new(layout.spool_dir());
        Ok(App {
            layout,
            config,
            locks,
            limiter,
            captcha,
            tokens,
            spool,
        })
    }

    /// Finds the runtime root for this request (its `FORMWARDEN_ROOT`, else next to the
    /// executable) and opens it.
    pub fn for_request(req: &Request) -> Result<App> {
        let env_root = req.var(ROOT_ENV).filter(|r| !r.is_empty());
        // Looking up our own path is a syscall per request; only needed without the variable.
        let exe = if env_root.is_some() {
            None
        } else {
            std::env::current_exe().ok()
        };
        let layout = Layout::discover(env_root, exe.as_deref()).ok_or_else(|| Error::ConfigMissing {
            path: std::path::PathBuf::from(format!(
                "var/config/config.toml (no {ROOT_ENV} set and no var/config/ found next to the executable)"
            )),
        })?;
        App::open(layout)
    }

    /// The hashed client key of a request. The raw address never leaves this function.
    pub fn client_key(&self, req: &Request) -> String {
        let addr = self.config.trusted_proxies.client_addr(
            req.var("REMOTE_ADDR").unwrap_or(""),
            req.header("x-forwarded-for"),
        );
        crate::net::client_key(&self.config.ip_salt, addr)
    }
}
