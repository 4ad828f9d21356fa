//! The self-check of an installation (`--check` on every executable, and the admin-only
//! `tokens?action=check` over HTTP): is the config valid, is every `var/` folder there and
//! writable by the user running us, does `flock` work on that file system and is it not a
//! network one, is randomness available, is the clock sane, is the mail transport usable,
//! is `var/` protected from the web, do the files the programs wrote belong to the account
//! running them, are messages given up or the quarantine full. Each finding is one line in
//! plain words that says what to do. The check writes only its own probe files (through `atomic`) and removes them;
//! it never changes or reads visitors' state (of the spool it counts only names).

use crate::app::App;
use crate::config::Config;
use crate::layout::Layout;
use crate::lock::{LockKey, LockRunner};
use crate::mail::Transport;
use std::path::Path;
use std::time::Duration;

/// One check's result.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was checked (`config`, `folders`, …).
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, and on failure what to do.
    pub detail: String,
}

fn finding(name: &'static str, ok: bool, detail: impl Into<String>) -> Finding {
    Finding {
        name,
        ok,
        detail: detail.into(),
    }
}

/// Magic numbers (statfs `f_type`) of file systems on which `flock` is not reliable.
const NETWORK_FS: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE"),
    (0x0102_1997, "9p"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
];

fn filesystem(var: &Path) -> Finding {
    let Ok(c) = std::ffi::CString::new(var.as_os_str().as_encoded_bytes()) else {
        return finding("filesystem", false, "the path of var/ contains a NUL byte");
    };
    // SAFETY: statfs(2) fills the zeroed struct we own from a valid C string.
    let (rc, kind) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let rc = libc::statfs(c.as_ptr(), &mut st);
        (rc, st.f_type as i64)
    };
    if rc != 0 {
        return finding(
            "filesystem",
            false,
            "cannot ask which file system var/ is on",
        );
    }
    match NETWORK_FS.iter().find(|(m, _)| *m == kind) {
        Some((_, name)) => finding(
            "filesystem",
            false,
            format!(
                "var/ is on a {name} network file system, where file locks are not reliable: \
                 put var/ on a local disk"
            ),
        ),
        None => finding("filesystem", true, "var/ is on a local file system"),
    }
}

fn folders(layout: &Layout) -> Finding {
    for dir in layout.state_dirs() {
        if let Err(e) = crate::fsio::create_dir_all(&dir) {
            return finding(
                "folders",
                false,
                format!(
                    "cannot create {}: {e}; create it and make it writable for the user the \
                     web server runs the executables as (in an FTP client: permissions 755, or \
                     777 if your host runs CGI as another user)",
                    dir.display()
                ),
            );
        }
        let probe = dir.join(format!("{}check-probe", crate::atomic::TEMP_PREFIX));
        let written = crate::atomic::write_ephemeral(&probe, b"probe")
            .and_then(|()| crate::atomic::remove(&probe));
        if let Err(e) = written {
            return finding(
                "folders",
                false,
                format!(
                    "{} is not writable ({e}): make it writable for the user the web server \
                     runs the executables as",
                    dir.display()
                ),
            );
        }
    }
    finding(
        "folders",
        true,
        "every folder under var/ exists and is writable",
    )
}

/// Entries looked at by [`ownership`], at most: a sample is enough to find a command that
/// ran as the wrong account, and the check stays quick under a full rate-limit folder.
const OWNERSHIP_LOOKS: usize = 5_000;

/// Files the programs write (state, messages, lock files) and the shard folders they
/// create, owned by another account than the one running the check: left by a command run
/// as root or as the operator's login where the web server runs CGI as its own. State
/// files are 0600 and lock files need writing, so the programs fail on them. The operator's
/// own uploads (the folders, `.keep`, `.htaccess`, the config) are not counted.
fn ownership(layout: &Layout) -> Finding {
    use std::os::unix::fs::MetadataExt;
    /// What the walk found so far.
    struct Tally {
        me: u32,
        looked: usize,
        foreign: usize,
        first: Option<(std::path::PathBuf, u32)>,
    }
    impl Tally {
        fn look(&mut self, path: &Path) {
            self.looked += 1;
            if let Ok(m) = crate::fsio::symlink_metadata(path)
                && m.uid() != self.me
            {
                self.foreign += 1;
                self.first
                    .get_or_insert_with(|| (path.to_path_buf(), m.uid()));
            }
        }
    }
    let written =
        |name: &str| !name.starts_with('.') && (name.ends_with(".toml") || name.ends_with(".lock"));
    let is_shard = |name: &str| name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
    // Never more names of one folder than the whole budget: a shard of a busy rate limiter
    // holds thousands.
    let names = |dir: &Path| -> Vec<(String, std::path::PathBuf)> {
        crate::fsio::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .take(OWNERSHIP_LOOKS)
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect()
    };
    let mut t = Tally {
        // SAFETY: geteuid(2) takes no arguments, cannot fail and touches no memory.
        me: unsafe { libc::geteuid() },
        looked: 0,
        foreign: 0,
        first: None,
    };
    let singles = [layout.sweep_marker(), layout.mail_quota_file()];
    for path in singles.iter().filter(|p| crate::fsio::exists(p)) {
        t.look(path);
    }
    // Token lists and messages first: few, and the likeliest to have been written by a
    // command run by hand. The sharded folders (locks, challenges, windows) may be large.
    let sharded = [
        layout.lock_dir(),
        layout.captcha_dir(),
        layout.ratelimit_dir(),
    ];
    let mut dirs = layout.state_dirs();
    dirs.sort_by_key(|d| sharded.contains(d));
    let mut cut_short = false;
    'dirs: for dir in dirs {
        for (name, path) in names(&dir) {
            if is_shard(&name) {
                t.look(&path);
                for (inner, file) in names(&path) {
                    if written(&inner) {
                        t.look(&file);
                    }
                    if t.looked >= OWNERSHIP_LOOKS {
                        cut_short = true;
                        break 'dirs;
                    }
                }
            } else if written(&name) {
                t.look(&path);
            }
            if t.looked >= OWNERSHIP_LOOKS {
                cut_short = true;
                break 'dirs;
            }
        }
    }
    let Tally {
        me,
        looked,
        foreign,
        first,
    } = t;
    let sample = if cut_short { "the first " } else { "" };
    match first {
        None => finding(
            "ownership",
            true,
            format!(
                "the files the programs wrote under var/ are theirs ({sample}{looked} looked at)"
            ),
        ),
        Some((path, owner)) => finding(
            "ownership",
            false,
            format!(
                "{foreign} of {sample}{looked} files or folders under var/ belong to account \
                 {owner}, not to {me} that runs this check, e.g. {}. The programs only use \
                 what their own account wrote: run the command-line programs and cron as the \
                 same account the web server runs the programs as, and give these files to \
                 that account (chown) or delete them",
                path.display()
            ),
        ),
    }
}

fn locking(layout: &Layout) -> Finding {
    let runner = LockRunner::new(
        layout.lock_dir(),
        Duration::from_millis(300),
        Duration::from_millis(25),
    );
    let key = LockKey::new("check_probe");
    match runner.try_acquire(&key).and_then(|g| match g {
        Some(g) => g.release_and_unlink().map(|()| true),
        None => Ok(false),
    }) {
        Ok(true) => finding("locking", true, "flock works in var/lock/"),
        Ok(false) => finding(
            "locking",
            true,
            "flock works (another check holds the probe)",
        ),
        Err(e) => finding(
            "locking",
            false,
            format!("flock fails in var/lock/ ({e}): put var/ on a local disk"),
        ),
    }
}

fn mail(config: &Config, root: &Path) -> Finding {
    match &config.mail.transport {
        Transport::Sendmail { command, .. } => {
            use std::os::unix::fs::PermissionsExt;
            match crate::fsio::metadata(command) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => finding(
                    "mail",
                    true,
                    format!("sendmail transport: {} is executable", command.display()),
                ),
                _ => finding(
                    "mail",
                    false,
                    format!(
                        "sendmail transport: {} is missing or not executable; ask your host \
                         for the sendmail path, or use the smtp transport",
                        command.display()
                    ),
                ),
            }
        }
        Transport::Smtp(s) => finding(
            "mail",
            true,
            format!(
                "smtp transport to {}:{} (send a test message through the form to prove it)",
                s.host, s.port
            ),
        ),
        Transport::File { dir } => {
            let dir = if dir.is_absolute() {
                dir.clone()
            } else {
                root.join(dir)
            };
            let ok = crate::fsio::create_dir_all(&dir).is_ok();
            finding(
                "mail",
                ok,
                if ok {
                    format!("file transport into {} (mail is NOT sent)", dir.display())
                } else {
                    format!("file transport: cannot create {}", dir.display())
                },
            )
        }
    }
}

/// The messages that need the operator: given up in `failed/` (the mail settings are wrong
/// or the server refuses them) and a full quarantine (new suspects are refused with 503).
/// Only the names are counted; no message is read. Waiting messages are reported, not a
/// problem: the retry sends them.
fn messages(layout: &Layout, config: &Config) -> Finding {
    use crate::spool::{Folder, Spool};
    let spool = Spool::new(layout.spool_dir());
    let count = |f: Folder| spool.ids(f).map(|ids| ids.len());
    let (waiting, failed, held) = match (
        count(Folder::New),
        count(Folder::Failed),
        count(Folder::Quarantine),
    ) {
        (Ok(w), Ok(f), Ok(q)) => (w, f, q),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            return finding(
                "messages",
                false,
                format!("the spool cannot be listed: {e}"),
            );
        }
    };
    let ceiling = config.spam.max_quarantine;
    let counts = format!("{waiting} waiting, {failed} given up, {held} in quarantine");
    let mut todo = Vec::new();
    if failed > 0 {
        todo.push(
            "messages were given up: see why with spool list failed (or \
             tokens?action=spool&do=list&folder=failed), fix [mail], then requeue them \
             (spool requeue all, or POST …&do=requeue&id=all)"
                .to_string(),
        );
    }
    if held >= ceiling {
        todo.push(format!(
            "the quarantine is full ({ceiling}): new suspects are refused; release or \
             delete what is held (spool list quarantine, or …&do=list&folder=quarantine)"
        ));
    }
    if todo.is_empty() {
        finding("messages", true, counts)
    } else {
        finding("messages", false, format!("{counts}: {}", todo.join("; ")))
    }
}

/// The shared store, when the config names one: it must answer a `PING` within its bounds.
fn store(config: &Config) -> Finding {
    let answered = crate::store::Store::open(&config.store, config.lock_wait, &config.path)
        .and_then(|s| s.ping());
    match answered {
        Ok(None) => finding(
            "store",
            true,
            "rate limits, CAPTCHAs and tokens are kept in files under var/",
        ),
        Ok(Some(line)) => finding("store", true, line),
        Err(e) => finding("store", false, e.to_string()),
    }
}

/// Whether the web can reach `var/`: only when it lies inside the document root (known
/// over HTTP), and then a `var/.htaccess` that denies everything must be there.
fn protection(layout: &Layout, document_root: Option<&Path>) -> Finding {
    let var = layout.var();
    let inside = document_root.is_some_and(|d| var.starts_with(d))
        || crate::fsio::exists(&layout.root().join(".htaccess"))
        || crate::fsio::exists(&layout.root().join("index.html"));
    if !inside {
        return finding("protection", true, "var/ is outside the web root");
    }
    let guard = crate::fsio::read_to_string(&var.join(".htaccess")).unwrap_or_default();
    if guard.contains("Require all denied") || guard.contains("Deny from all") {
        finding(
            "protection",
            true,
            "var/ is inside the web root and var/.htaccess denies every request",
        )
    } else {
        finding(
            "protection",
            false,
            "var/ is inside the web root without a guard: upload deploy/apache/var.htaccess as \
             var/.htaccess (or move var/ out of the web root)",
        )
    }
}

/// Runs every check for this process's runtime tree. `document_root` is the web server's
/// `DOCUMENT_ROOT` when known.
pub fn run(document_root: Option<&Path>) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(layout) = App::process_layout() else {
        out.push(finding(
            "root",
            false,
            "no var/config/ found next to the executable or above it, and FORMWARDEN_ROOT is \
             not set: upload var/ next to the cgi-bin folder, or set FORMWARDEN_ROOT",
        ));
        return out;
    };
    if !crate::fsio::is_dir(&layout.var()) {
        out.push(finding(
            "root",
            false,
            format!(
                "{} does not exist: upload var/ there, or point FORMWARDEN_ROOT at the folder that holds it",
                layout.var().display()
            ),
        ));
        return out;
    }
    out.push(finding(
        "root",
        true,
        format!("runtime tree at {}", layout.root().display()),
    ));
    let config = Config::load(&layout.config_file());
    match &config {
        Ok(_) => out.push(finding("config", true, "var/config/config.toml is valid")),
        Err(e) => out.push(finding("config", false, e.to_string())),
    }
    out.push(folders(&layout));
    out.push(ownership(&layout));
    out.push(locking(&layout));
    out.push(filesystem(&layout.var()));
    out.push(match crate::random::bytes::<16>() {
        Ok(_) => finding(
            "randomness",
            true,
            "the operating system gives random bytes",
        ),
        Err(e) => finding("randomness", false, e.to_string()),
    });
    let now = crate::state::now();
    out.push(if (1_704_067_200..4_102_444_800).contains(&now) {
        finding("clock", true, "the clock is set")
    } else {
        finding(
            "clock",
            false,
            format!("the clock says {now} seconds since 1970: ask your host to set it"),
        )
    });
    if let Ok(c) = &config {
        out.push(mail(c, layout.root()));
        out.push(store(c));
        out.push(messages(&layout, c));
    }
    out.push(protection(&layout, document_root));
    out
}

/// Prints `findings` one per line and returns the exit code: 0 when all passed, else 1.
pub fn print(findings: &[Finding], out: &mut dyn std::io::Write) -> i32 {
    for f in findings {
        let _ = writeln!(
            out,
            "{} {:<11} {}",
            if f.ok { "ok  " } else { "FAIL" },
            f.name,
            f.detail
        );
    }
    i32::from(findings.iter().any(|f| !f.ok))
}

/// `--check` as the first argument of any executable: prints the report and returns the
/// exit code; `None` without it.
pub fn from_args() -> Option<i32> {
    if std::env::args().nth(1).as_deref() != Some("--check") {
        return None;
    }
    Some(print(&run(None), &mut std::io::stdout()))
}
