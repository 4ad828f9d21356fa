//! The services of one runtime tree, wired together from its config: lock runner, rate
//! limiter, CAPTCHA service, token service and spool. Building an [`App`] is the first
//! thing every invocation does; it fails with a clear error when the runtime root or the
//! config is missing or broken. Services get their folders and lock runner from here and
//! from nowhere else, and their [`Store`] (files, or a shared Redis for several web nodes)
//! from the config's `[store]`. It never reads or writes state itself and holds no locks.

use crate::captcha::{self, CaptchaService};
use crate::cgi::Request;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::layout::{Layout, ROOT_ENV};
use crate::lock::LockRunner;
use crate::ratelimit::{Limits, RateLimiter};
use crate::spool::Spool;
use crate::store::Store;
use crate::tokens::TokenService;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often a kept [`App`] makes sure its state folders still exist.
pub const DIRS_RECHECK: Duration = Duration::from_secs(10);

/// The `App` this process built last, and the identity of the files it was built from.
struct Kept {
    app: App,
    stamps: Vec<Option<FileStamp>>,
    dirs_checked: Instant,
}

static CACHE: Mutex<Option<Kept>> = Mutex::new(None);

/// What tells one version of a file from another without reading it: device, inode, size
/// and both change times to the nanosecond. An FTP upload replaces or truncates the file,
/// which changes at least one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The stamp of each file, `None` for one that is absent (or cannot be looked at).
fn stamps(files: &[PathBuf]) -> Vec<Option<FileStamp>> {
    files
        .iter()
        .map(|f| {
            crate::fsio::metadata(f).ok().map(|m| FileStamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            })
        })
        .collect()
}

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
    /// The host's outgoing mail quota.
    pub quota: crate::quota::Quota,
    /// Where rate limits, challenges and token lists are kept.
    pub store: Store,
}

impl App {
    /// Opens the runtime tree at `layout`: reads the config and makes sure the state
    /// folders exist.
    pub fn open(layout: Layout) -> Result<App> {
        let app = App::open_as_is(layout)?;
        app.layout.create_state_dirs()?;
        Ok(app)
    }

    /// Opens the runtime tree at `layout` without creating anything in it: for the
    /// self-check, which must be able to report a folder that cannot be created.
    pub fn open_as_is(layout: Layout) -> Result<App> {
        let config = Config::load(&layout.config_file())?;
        crate::deadline::set_limit(config.request_timeout);
        let locks = LockRunner::new(layout.lock_dir(), config.lock_wait, config.lock_poll);
        let store = Store::open(&config.store, config.lock_wait, &config.path)?;
        let limiter = RateLimiter::new(
            layout.ratelimit_dir(),
            locks.clone(),
            Limits {
                captcha_max_get: config.captcha_max_get,
                contact_max_post: config.contact_max_post,
                window_seconds: config.rate_limit_window.as_secs(),
                max_windows: config.max_windows,
            },
        )
        .with_store(store.clone());
        let captcha = CaptchaService::new(
            layout.captcha_dir(),
            locks.clone(),
            captcha::Settings {
                salt: config.ip_salt.clone(),
                lifetime: config.captcha_lifetime,
                max_attempts: config.captcha_max_attempts,
                length: config.captcha_length,
                max_challenges: config.max_challenges,
                policy: config.spam.challenge,
                pow_bits: config.spam.pow_bits,
                pow_extra_bits: config.spam.pow_extra_bits,
            },
        )
        .with_store(store.clone());
        let tokens = TokenService::new(
            layout.tokens_dir(),
            locks.clone(),
            config.tokens.profiles.clone(),
        )
        .with_store(store.clone());
        let spool = Spool::new(layout.spool_dir());
        let quota = crate::quota::Quota::new(
            layout.mail_quota_file(),
            locks.clone(),
            config.mail.max_per_hour,
            config.mail.max_per_day,
        );
        Ok(App {
            quota,
            layout,
            config,
            locks,
            limiter,
            captcha,
            tokens,
            spool,
            store,
        })
    }

    /// Finds this process's runtime root and opens it. The root comes from the process's
    /// own start: its `FORMWARDEN_ROOT` environment variable, else the nearest folder
    /// above the executable that holds `var/config/`. It is looked up once and fixed for
    /// the life of the process. A request can never choose it: under CGI the web server
    /// builds the process environment from its own config, and under FastCGI the request
    /// parameters (which any peer of the socket writes) are never consulted.
    ///
    /// A process that serves many requests (a FastCGI responder) builds its `App` once and
    /// hands out copies: the config is parsed again only when one of its files changed (a
    /// `stat` of each per request, see [`Config::input_files`]), and the state folders are
    /// made sure of again every [`DIRS_RECHECK`], so that an operator who deletes one over
    /// FTP gets it back without a restart.
    pub fn discover() -> Result<App> {
        let layout = App::discovered_layout()?;
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = cache.as_mut()
            && kept.app.layout == layout
            && kept.stamps == stamps(&kept.app.config.input_files())
        {
            if kept.dirs_checked.elapsed() >= DIRS_RECHECK {
                kept.app.layout.create_state_dirs()?;
                kept.dirs_checked = Instant::now();
            }
            crate::deadline::set_limit(kept.app.config.request_timeout);
            return Ok(kept.app.clone());
        }
        drop(cache);
        // Stamped before reading, so that a change made while the config is read shows as a
        // changed stamp on the next request rather than being missed.
        let before = stamps(&Config::files_read_for(&layout.config_file()));
        let app = App::open(layout)?;
        let mut stamps_now = before.to_vec();
        stamps_now.extend(stamps(&app.config.input_files()[before.len()..]));
        *CACHE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Kept {
            app: app.clone(),
            stamps: stamps_now,
            dirs_checked: Instant::now(),
        });
        Ok(app)
    }

    /// [`App::discover`] without creating the state folders (see [`App::open_as_is`]).
    pub fn discover_as_is() -> Result<App> {
        App::open_as_is(App::discovered_layout()?)
    }

    fn discovered_layout() -> Result<Layout> {
        App::process_layout().ok_or_else(|| Error::ConfigMissing {
            path: std::path::PathBuf::from(format!(
                "var/config/config.toml (no {ROOT_ENV} set and no var/config/ found next to the executable)"
            )),
        })
    }

    /// This process's runtime tree, found on first use and then fixed: a FastCGI responder
    /// serves every request from the root it was started for (see [`App::discover`]).
    pub fn process_layout() -> Option<Layout> {
        static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();
        LAYOUT
            .get_or_init(|| {
                let env_root = std::env::var(ROOT_ENV).ok().filter(|r| !r.is_empty());
                // Looking up our own path is a syscall; only needed without the variable.
                let exe = if env_root.is_some() {
                    None
                } else {
                    std::env::current_exe().ok()
                };
                Layout::discover(env_root.as_deref(), exe.as_deref())
            })
            .clone()
    }

    /// What mail delivery works with, lent from this tree.
    pub fn delivery(&self) -> crate::delivery::Delivery<'_> {
        crate::delivery::Delivery {
            locks: &self.locks,
            spool: &self.spool,
            quota: &self.quota,
            mail: &self.config.mail,
            root: self.layout.root(),
        }
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
