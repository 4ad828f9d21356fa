//! Real web servers on loopback for the tests: Apache (mod_cgid), nginx with fcgiwrap (CGI)
//! and nginx with one spawn-fcgi responder per executable (FastCGI). Each server gets a
//! throw-away prefix folder of its own, and the deploy/ files are included verbatim: the
//! only difference from what an operator installs is the `@PLACEHOLDER@` templating. What
//! the tests add around them (a minimal top-level httpd.conf or nginx.conf with pid file,
//! logs, temp paths, modules) is the part a distribution's packaging provides.
//!
//! Every server runs as an unprivileged account (`nobody` when the tests run as root, as
//! in CI), the way a host runs it, so a deploy config that only works as root fails here.
//! Each started program leads a process group of its own, and dropping the [`Server`]
//! signals the whole group and waits until no member is left: no server, fcgiwrap worker
//! or CGI process outlives its test.
//!
//! Tests talk to them with the client in [`super::http`].

use super::http::Client;
use super::net::{self, free_port};
use super::{Site, exe, procs, wait_for, wait_until};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a server may take to answer after its start. They need well under a second;
/// the margin is for a loaded CI machine, and the wait ends as soon as one answers.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a stopped process group may take to exit on SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a server is started again on a fresh port when another process took the
/// port between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// A `PATH` for the servers: they are started with a cleared environment.
const SERVER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Debian's folder of Apache modules (the CI image is Debian).
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
/// The executables a host installs.
const PROGRAMS: [&str; 3] = ["captcha", "contact", "tokens"];

/// The files in deploy/, shipped to operators.
fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

// ---------------------------------------------------------------------------------------
// The unprivileged account
// ---------------------------------------------------------------------------------------

/// The account servers run as.
#[derive(Debug, Clone, Copy)]
pub struct Account {
    uid: u32,
    gid: u32,
    /// False when the tests do not run as root: the servers then simply run as the
    /// current user, which is unprivileged already.
    switch: bool,
}

impl Account {
    /// The account the tests run as (root in CI): for a server that must start as root
    /// and switch users itself, such as vsftpd.
    pub fn caller() -> Account {
        Account {
            uid: procs::effective_uid(),
            gid: 0,
            switch: false,
        }
    }

    /// The numeric uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

/// `nobody` when running as root, the current user otherwise.
pub fn account() -> Account {
    let euid = procs::effective_uid();
    if euid != 0 {
        return Account {
            uid: euid,
            gid: 0,
            switch: false,
        };
    }
    let (uid, gid) =
        user_ids("nobody").expect("a `nobody` account in /etc/passwd to run the web servers as");
    Account {
        uid,
        gid,
        switch: true,
    }
}

/// The uid and primary gid of local account `name`, from `/etc/passwd` (where `useradd`
/// puts the accounts the tests create); `None` when there is no such account.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
}

/// Gives `path` and everything below it to the server account (a no-op when the tests do
/// not run as root).
pub fn give_tree(path: &Path, acct: Account) {
    if !acct.switch {
        return;
    }
    match std::os::unix::fs::lchown(path, Some(acct.uid), Some(acct.gid)) {
        // A running server may just have swept the file (an expired challenge, a temp
        // file); what is gone needs no owner.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("chown {}: {e}", path.display()),
        Ok(()) => {}
    }
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            give_tree(&entry.path(), acct);
        }
    }
}

/// Panics with a clear message when the server account could not reach `dir`: every
/// folder above it must let others traverse it. `TMPDIR` pointing into a private home
/// folder is the usual cause.
pub fn assert_reachable(dir: &Path, acct: Account) {
    if !acct.switch {
        return;
    }
    for ancestor in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)
            .unwrap_or_else(|e| panic!("stat {}: {e}", ancestor.display()))
            .permissions()
            .mode();
        assert!(
            mode & 0o001 != 0,
            "the web servers run as an unprivileged account that cannot enter {} (mode {mode:o}); \
             point TMPDIR at a folder everyone may traverse, such as /tmp",
            ancestor.display()
        );
    }
}

/// Hands the runtime tree to the servers' account: the executables they start must write
/// everywhere under `var/`. Call it again after the test itself wrote there as root (a
/// token rotated by the CLI, a lock file held by the test), or the server's processes
/// cannot open what the test created.
pub fn share_var(site: &Site) {
    let acct = account();
    // The test's temp folder is private (0700) by default; the server must traverse it.
    std::fs::set_permissions(site.root(), std::fs::Permissions::from_mode(0o755))
        .expect("open up the site root");
    give_tree(&site.var(""), acct);
}

/// Copies a folder tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
        .flatten()
    {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} → {}: {e}", src.display(), dst.display()));
        }
    }
}

/// Installs an executable under a new name: a hard link when possible (the debug builds
/// are large), a copy across file systems. Never a symlink: the executables find their
/// runtime root from their own path, which a symlink would resolve elsewhere.
fn install_program(src: &Path, dst: &Path) {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst)
            .unwrap_or_else(|e| panic!("copy {} → {}: {e}", src.display(), dst.display()));
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

/// The `@NAME@` placeholders (upper-case letters and `_`) left in `text`.
fn placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('@') {
        rest = &rest[i + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with('@') {
            rest = &rest[name.len() + 1..];
            found.push(format!("@{name}@"));
        }
    }
    found
}

/// Replaces every `@NAME@` in `text`; panics when one is left over, so a placeholder added
/// to a deploy file cannot silently reach a server untemplated.
fn template(text: &str, values: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in values {
        out = out.replace(&format!("@{name}@"), value);
    }
    let leftover = placeholders(&out);
    assert!(
        leftover.is_empty(),
        "placeholders not templated: {leftover:?}"
    );
    out
}

// ---------------------------------------------------------------------------------------
// Process groups
// ---------------------------------------------------------------------------------------

/// One started program and everything it forks, in a process group it leads; stopped and
/// reaped on drop.
pub struct Group {
    name: String,
    child: Child,
}

impl Group {
    /// Starts `cmd` as the leader of a new process group, as the server account, with a
    /// cleared environment and its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, acct: Account) -> Group {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        cmd.env_clear()
            .env("PATH", SERVER_PATH)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if acct.switch {
            // std drops the supplementary groups too when root sets a uid.
            cmd.uid(acct.uid).gid(acct.gid);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("start {name}: {e} (is it installed? scripts/install-test-deps.sh)")
        });
        Group {
            name: name.to_string(),
            child,
        }
    }

    fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// True while the leader runs. Read from `/proc` rather than `try_wait`: the leader
    /// stays unreaped until [`Group::stop`], so its pid, which names the group, cannot be
    /// reused by another test's process while we may still signal the group.
    pub fn is_running(&self) -> bool {
        procs::running(self.child.id())
    }

    /// SIGTERM to the whole group, SIGKILL after the grace period, then reaps the leader.
    fn stop(&mut self) {
        let pgid = self.pgid();
        let group = -(pgid as i32);
        procs::signal(group, libc::SIGTERM);
        if !wait_group_gone(pgid, STOP_GRACE) {
            eprintln!("{} (group {pgid}) ignored SIGTERM; killing it", self.name);
            procs::kill_hard(group);
            wait_group_gone(pgid, STOP_GRACE);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until group `pgid` has no live member; false on timeout.
fn wait_group_gone(pgid: u32, limit: Duration) -> bool {
    wait_until(limit, || procs::group_members(pgid).is_empty())
}

/// True when a unix socket at `path` is listening (from `/proc/net/unix`, so nothing
/// connects to the responder just to probe it).
fn unix_socket_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Flags 00010000 is __SO_ACCEPTCON: the socket is in listen().
        f.len() >= 8 && f[7] == want && f[3] == "00010000"
    })
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// Which server and deploy config a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Apache with deploy/apache/vhost.conf: ScriptAlias to plain-named executables.
    ApacheVhost,
    /// Apache as a stock shared host (AllowOverride All) with deploy/apache/.htaccess in
    /// `public_html/cgi-bin/` next to `*.cgi`; var/ outside the web root, found by the
    /// executables from their own location (FORMWARDEN_ROOT unset).
    ApacheHtaccess,
    /// The same, but with the runtime root being the web root itself (a host without a
    /// folder outside it): var/ is live inside the web root, guarded by
    /// deploy/apache/var.htaccess as var/.htaccess.
    ApacheHtaccessVarInWebRoot,
    /// nginx with deploy/nginx/cgi.conf and fcgiwrap.
    NginxCgi,
    /// nginx with deploy/nginx/fastcgi.conf and one spawn-fcgi responder per executable.
    NginxFastcgi,
}

/// How Apache is set up (see [`Kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApacheSetup {
    /// deploy/apache/vhost.conf.
    Vhost,
    /// deploy/apache/.htaccess, var/ outside the web root.
    Htaccess,
    /// deploy/apache/.htaccess, var/ inside the web root with var.htaccess.
    HtaccessVarInWebRoot,
}

/// A running web server (and its helpers) for one [`Site`]; stopped on drop.
pub struct Server {
    kind: Kind,
    port: u16,
    docroot: PathBuf,
    /// Log files of the server and its helpers, for failure messages.
    logs: Vec<PathBuf>,
    /// The HTTP server first, then its backends: fields and vector elements drop in
    /// order, so nginx stops taking requests before its backends go away.
    groups: Vec<Group>,
    /// The prefix folder (configs, logs, sockets); removed after the groups stopped.
    _prefix: tempfile::TempDir,
}

/// What every server needs before its start: a prefix folder, the static site, the
/// executables and a runtime tree the server account may use.
struct Prep {
    acct: Account,
    prefix: tempfile::TempDir,
    docroot: PathBuf,
    cgi_dir: PathBuf,
    logs: PathBuf,
}

impl Prep {
    /// Lays out the web root and the executables under `site.root()` the way a host
    /// would: `public_html/` (or the root itself) for the static site, the executables in
    /// `public_html/cgi-bin/` (shared hosting) or in `cgi-bin/` outside the web root.
    fn new(site: &Site, docroot_rel: &str, cgi_rel: &str, suffix: &str) -> Prep {
        let docroot = if docroot_rel.is_empty() {
            site.root().to_path_buf()
        } else {
            site.root().join(docroot_rel)
        };
        let prep = Prep::bare(site.root(), docroot, site.root().join(cgi_rel));
        copy_tree(&deploy("site"), &prep.docroot);
        std::fs::create_dir_all(&prep.cgi_dir).expect("mkdir cgi dir");
        for p in PROGRAMS {
            install_program(&exe(p), &prep.cgi_dir.join(format!("{p}{suffix}")));
        }
        share_var(site);
        prep
    }

    /// Only the server's own prefix folder, for a tree that is already in place (one that
    /// a deploy uploaded): nothing is installed and no owner changed.
    fn bare(root: &Path, docroot: PathBuf, cgi_dir: PathBuf) -> Prep {
        let acct = account();
        let prefix = tempfile::Builder::new()
            .prefix("fw-web-")
            .tempdir()
            .expect("server prefix folder");
        std::fs::set_permissions(prefix.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod prefix");
        assert_reachable(prefix.path(), acct);
        assert_reachable(root, acct);
        let logs = prefix.path().join("logs");
        for d in ["logs", "run", "temp"] {
            std::fs::create_dir_all(prefix.path().join(d)).expect("mkdir");
            give_tree(&prefix.path().join(d), acct);
        }
        Prep {
            acct,
            prefix,
            docroot,
            cgi_dir,
            logs,
        }
    }

    fn dir(&self) -> &Path {
        self.prefix.path()
    }
}

/// Apache with mpm_event and mod_cgid.
pub struct Apache;

impl Apache {
    /// Apache as a stock shared host (AllowOverride All, CGI as the server account) over an
    /// account folder that a deploy already filled: `web_root` under `root` is served as
    /// it is, with whatever `.htaccess` files the deploy put there.
    pub fn start_deployed(root: &Path, web_root: &str) -> Server {
        let docroot = if web_root.is_empty() || web_root == "." {
            root.to_path_buf()
        } else {
            root.join(web_root)
        };
        let prep = Prep::bare(root, docroot.clone(), docroot.join("cgi-bin"));
        let kind = if docroot == root {
            Kind::ApacheHtaccessVarInWebRoot
        } else {
            Kind::ApacheHtaccess
        };
        let site_conf = apache_shared_host(&prep.docroot);
        Apache::launch_with(kind, prep, |_| site_conf.clone())
    }

    /// Starts Apache for `site` on a free loopback port and waits until it answers.
    pub fn start(site: &Site, setup: ApacheSetup) -> Server {
        let (kind, docroot_rel, cgi_rel, suffix) = match setup {
            ApacheSetup::Vhost => (Kind::ApacheVhost, "public_html", "cgi-bin", ""),
            ApacheSetup::Htaccess => (
                Kind::ApacheHtaccess,
                "public_html",
                "public_html/cgi-bin",
                ".cgi",
            ),
            ApacheSetup::HtaccessVarInWebRoot => {
                (Kind::ApacheHtaccessVarInWebRoot, "", "cgi-bin", ".cgi")
            }
        };
        let prep = Prep::new(site, docroot_rel, cgi_rel, suffix);
        // The deploy/ part: the virtual host, or the .htaccess files of shared hosting.
        let vhost = match setup {
            ApacheSetup::Vhost => Some(
                std::fs::read_to_string(deploy("apache/vhost.conf"))
                    .expect("read deploy/apache/vhost.conf"),
            ),
            ApacheSetup::Htaccess | ApacheSetup::HtaccessVarInWebRoot => {
                std::fs::copy(deploy("apache/.htaccess"), prep.cgi_dir.join(".htaccess"))
                    .expect("install deploy/apache/.htaccess");
                if setup == ApacheSetup::HtaccessVarInWebRoot {
                    std::fs::copy(deploy("apache/var.htaccess"), site.var(".htaccess"))
                        .expect("install deploy/apache/var.htaccess");
                    share_var(site);
                }
                None
            }
        };
        let conf = prep.dir().join("conf");
        let (docroot, cgi_dir) = (prep.docroot.clone(), prep.cgi_dir.clone());
        Apache::launch_with(kind, prep, |port| match &vhost {
            Some(text) => {
                let text = template(
                    text,
                    &[
                        ("PORT", port.to_string()),
                        ("SERVER_NAME", "127.0.0.1".to_string()),
                        ("SITE", docroot.display().to_string()),
                        ("CGI_DIR", cgi_dir.display().to_string()),
                        ("ROOT", site.root().display().to_string()),
                    ],
                );
                std::fs::write(conf.join("vhost.conf"), text).expect("write vhost.conf");
                format!("Include \"{}\"\n", conf.join("vhost.conf").display())
            }
            None => apache_shared_host(&docroot),
        })
    }

    /// Writes the top-level config around `site_conf(port)` and starts Apache.
    fn launch_with(kind: Kind, prep: Prep, mut site_conf: impl FnMut(u16) -> String) -> Server {
        let dir = prep.dir().to_path_buf();
        let conf = dir.join("conf");
        std::fs::create_dir_all(&conf).expect("mkdir conf");
        // mod_mime needs a types file; these are the types the site and the tests use.
        std::fs::write(
            conf.join("mime.types"),
            "text/html html htm\ntext/css css\ntext/javascript js\nimage/png png\n\
             image/svg+xml svg\ntext/plain txt\n",
        )
        .expect("write mime.types");
        let logs = vec![prep.logs.join("error.log"), prep.logs.join("stderr.log")];
        let (group, port) = launch(
            "apache2",
            &prep,
            &logs,
            &dir.join("run/httpd.pid"),
            |port| {
                std::fs::write(
                    conf.join("httpd.conf"),
                    apache_main_conf(&dir, port, &site_conf(port)),
                )
                .expect("write httpd.conf");
                let mut cmd = Command::new(apache_binary());
                cmd.arg("-f")
                    .arg(conf.join("httpd.conf"))
                    .arg("-DFOREGROUND");
                cmd
            },
        );
        Server {
            kind,
            port,
            docroot: prep.docroot,
            logs,
            groups: vec![group],
            _prefix: prep.prefix,
        }
    }
}

/// Starts an HTTP server made by `command(port)` on a free loopback port, as the server
/// account, and waits until it answers; retried on a fresh port when another process took
/// the port first. `logs[1]` receives the server's stdout and stderr.
fn launch(
    name: &str,
    prep: &Prep,
    logs: &[PathBuf],
    pid_file: &Path,
    mut command: impl FnMut(u16) -> Command,
) -> (Group, u16) {
    let mut last_log = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        let _ = std::fs::remove_file(pid_file);
        let group = Group::spawn(name, command(port), &logs[1], prep.acct);
        match wait_http_ready(&group, port, pid_file, logs) {
            Ready::Yes => return (group, port),
            Ready::PortTaken => {
                drop(group);
                last_log = read_logs(logs);
                // The next attempt's output is then the only one in the logs.
                for l in logs {
                    let _ = std::fs::write(l, "");
                }
            }
            Ready::Failed => {
                drop(group);
                panic!("{name} did not start:\n{}", read_logs(logs));
            }
        }
    }
    panic!("{name} found no free port in {PORT_ATTEMPTS} attempts:\n{last_log}");
}

/// The Apache binary (Debian names it apache2).
fn apache_binary() -> &'static str {
    if Path::new("/usr/sbin/apache2").exists() {
        "/usr/sbin/apache2"
    } else {
        "apache2"
    }
}

/// The top-level httpd.conf a distribution would ship: paths, modules, MPM sizing and a
/// closed `/`; `site` is the part under test.
fn apache_main_conf(dir: &Path, port: u16, site: &str) -> String {
    let d = dir.display();
    let m = APACHE_MODULES;
    format!(
        "ServerRoot \"{d}\"\n\
         DefaultRuntimeDir \"{d}/run\"\n\
         PidFile \"{d}/run/httpd.pid\"\n\
         ErrorLog \"{d}/logs/error.log\"\n\
         LogLevel warn\n\
         Listen 127.0.0.1:{port}\n\
         ServerName 127.0.0.1\n\
         LoadModule mpm_event_module {m}/mod_mpm_event.so\n\
         LoadModule authz_core_module {m}/mod_authz_core.so\n\
         LoadModule alias_module {m}/mod_alias.so\n\
         LoadModule cgid_module {m}/mod_cgid.so\n\
         LoadModule dir_module {m}/mod_dir.so\n\
         LoadModule env_module {m}/mod_env.so\n\
         LoadModule mime_module {m}/mod_mime.so\n\
         TypesConfig \"{d}/conf/mime.types\"\n\
         StartServers 1\n\
         ServerLimit 2\n\
         ThreadsPerChild 16\n\
         MaxRequestWorkers 32\n\
         MinSpareThreads 16\n\
         MaxSpareThreads 32\n\
         Timeout 30\n\
         <Directory />\n\
         \x20   Options None\n\
         \x20   AllowOverride None\n\
         \x20   Require all denied\n\
         </Directory>\n\
         {site}\n"
    )
}

/// What a stock shared host's main config says about its customers' web roots: .htaccess
/// files allowed to override everything, `.ht*` files never served (Debian's default).
fn apache_shared_host(docroot: &Path) -> String {
    let r = docroot.display();
    format!(
        "DocumentRoot \"{r}\"\n\
         DirectoryIndex index.html\n\
         AccessFileName .htaccess\n\
         <Directory \"{r}\">\n\
         \x20   Options FollowSymLinks\n\
         \x20   AllowOverride All\n\
         \x20   Require all granted\n\
         </Directory>\n\
         <FilesMatch \"^\\.ht\">\n\
         \x20   Require all denied\n\
         </FilesMatch>\n"
    )
}

/// nginx, in front of fcgiwrap (CGI) or of FastCGI responders.
pub struct Nginx;

impl Nginx {
    /// nginx with deploy/nginx/cgi.conf and `fcgiwrap -c 4`.
    pub fn start_cgi(site: &Site) -> Server {
        let prep = Prep::new(site, "public_html", "cgi-bin", "");
        let sock_dir = prep.dir().join("run");
        let sock = sock_dir.join("fcgiwrap.socket");
        let mut cmd = Command::new("fcgiwrap");
        cmd.args(["-c", "4", "-s"])
            .arg(format!("unix:{}", sock.display()));
        let backend = Group::spawn("fcgiwrap", cmd, &prep.logs.join("fcgiwrap.log"), prep.acct);
        wait_socket(&backend, &sock, &prep.logs.join("fcgiwrap.log"));
        Nginx::start(
            site,
            prep,
            Kind::NginxCgi,
            "nginx/cgi.conf",
            vec![backend],
            vec!["fcgiwrap.log"],
        )
    }

    /// nginx with deploy/nginx/fastcgi.conf and one `spawn-fcgi -n` responder per
    /// executable, each on its own unix socket (the executable finds the listening socket
    /// on fd 0 and serves FastCGI).
    pub fn start_fastcgi(site: &Site) -> Server {
        let prep = Prep::new(site, "public_html", "cgi-bin", "");
        let sock_dir = prep.dir().join("run");
        let mut backends = Vec::new();
        let mut logs = Vec::new();
        for p in PROGRAMS {
            let sock = sock_dir.join(format!("{p}.sock"));
            let log_name = format!("{p}.log");
            let log = prep.logs.join(&log_name);
            let mut cmd = Command::new("spawn-fcgi");
            cmd.args(["-n", "-M", "0600", "-s"])
                .arg(&sock)
                .arg("--")
                .arg(prep.cgi_dir.join(p));
            let group = Group::spawn(&format!("spawn-fcgi {p}"), cmd, &log, prep.acct);
            wait_socket(&group, &sock, &log);
            backends.push(group);
            logs.push(log_name);
        }
        let logs: Vec<&str> = logs.iter().map(String::as_str).collect();
        Nginx::start(
            site,
            prep,
            Kind::NginxFastcgi,
            "nginx/fastcgi.conf",
            backends,
            logs,
        )
    }

    fn start(
        site: &Site,
        prep: Prep,
        kind: Kind,
        server_block: &str,
        backends: Vec<Group>,
        backend_logs: Vec<&str>,
    ) -> Server {
        let dir = prep.dir().to_path_buf();
        let conf = dir.join("conf");
        std::fs::create_dir_all(&conf).expect("mkdir conf");
        // The files nginx ships next to nginx.conf, which the server block includes.
        for f in ["fastcgi_params", "mime.types"] {
            std::fs::copy(Path::new("/etc/nginx").join(f), conf.join(f))
                .unwrap_or_else(|e| panic!("copy /etc/nginx/{f} (is nginx installed?): {e}"));
        }
        let block = std::fs::read_to_string(deploy(server_block))
            .unwrap_or_else(|e| panic!("read deploy/{server_block}: {e}"));
        std::fs::write(conf.join("nginx.conf"), nginx_main_conf(&dir)).expect("write nginx.conf");
        let mut logs = vec![prep.logs.join("error.log"), prep.logs.join("stderr.log")];
        logs.extend(backend_logs.iter().map(|l| prep.logs.join(l)));
        let (group, port) = launch("nginx", &prep, &logs, &dir.join("run/nginx.pid"), |port| {
            let server_conf = template(
                &block,
                &[
                    // Loopback only: the placeholder takes an address with the port.
                    ("LISTEN", format!("127.0.0.1:{port}")),
                    ("SERVER_NAME", "127.0.0.1".to_string()),
                    ("SITE", prep.docroot.display().to_string()),
                    ("CGI_DIR", prep.cgi_dir.display().to_string()),
                    ("ROOT", site.root().display().to_string()),
                    ("SOCK_DIR", dir.join("run").display().to_string()),
                ],
            );
            std::fs::write(conf.join("server.conf"), server_conf).expect("write server.conf");
            let mut cmd = Command::new(nginx_binary());
            cmd.arg("-p")
                .arg(format!("{}/", dir.display()))
                .arg("-c")
                .arg(conf.join("nginx.conf"))
                // The log from the start, before the config names it: otherwise nginx
                // first opens the packaged log path, which the server account may not.
                .arg("-e")
                .arg(prep.logs.join("error.log"));
            cmd
        });
        // A responder that exits at once (say, one that does not recognise the socket on
        // fd 0 and takes its command-line path) may still have been seen listening, as
        // spawn-fcgi opens the socket before it starts the program; by now it is gone.
        for b in &backends {
            assert!(
                b.is_running(),
                "{} exited after its start:\n{}",
                b.name,
                read_logs(&logs)
            );
        }
        let mut groups = vec![group];
        groups.extend(backends);
        Server {
            kind,
            port,
            docroot: prep.docroot,
            logs,
            groups,
            _prefix: prep.prefix,
        }
    }
}

/// The nginx executable (Debian installs it in /usr/sbin, which root's PATH may lack).
pub fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// The top-level nginx.conf a distribution would ship, with every path it writes inside
/// the prefix; `conf/server.conf` is the deploy/ server block.
fn nginx_main_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes 2;\n\
         pid {d}/run/nginx.pid;\n\
         error_log {d}/logs/error.log warn;\n\
         events {{\n    worker_connections 512;\n}}\n\
         http {{\n\
         \x20   include mime.types;\n\
         \x20   default_type application/octet-stream;\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/temp/client_body;\n\
         \x20   proxy_temp_path {d}/temp/proxy;\n\
         \x20   fastcgi_temp_path {d}/temp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/temp/uwsgi;\n\
         \x20   scgi_temp_path {d}/temp/scgi;\n\
         \x20   include server.conf;\n\
         }}\n"
    )
}

enum Ready {
    Yes,
    PortTaken,
    Failed,
}

/// Waits until the server wrote its pid file with its own pid and accepts connections on
/// `port`. The pid check makes sure that whatever answers on the port is this server and
/// not another test's that took the port first.
fn wait_http_ready(group: &Group, port: u16, pid_file: &Path, logs: &[PathBuf]) -> Ready {
    wait_for(START_DEADLINE, || {
        if !group.is_running() {
            return Some(if read_logs(logs).contains("Address already in use") {
                Ready::PortTaken
            } else {
                Ready::Failed
            });
        }
        let own = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            == Some(group.pgid());
        (own && net::accepts(port)).then_some(Ready::Yes)
    })
    .unwrap_or(Ready::Failed)
}

/// Waits until a backend listens on its unix socket; panics with its log otherwise.
fn wait_socket(group: &Group, sock: &Path, log: &Path) {
    let listening = wait_for(START_DEADLINE, || {
        if unix_socket_listening(sock) {
            Some(true)
        } else {
            (!group.is_running()).then_some(false)
        }
    });
    if listening == Some(true) {
        return;
    }
    panic!(
        "{} did not listen on {}:\n{}",
        group.name,
        sock.display(),
        read_logs(&[log.to_path_buf()])
    );
}

fn read_logs(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| {
            format!(
                "--- {} ---\n{}",
                f.display(),
                std::fs::read_to_string(f).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Server {
    /// Starts the server of `kind` for `site`.
    pub fn start(kind: Kind, site: &Site) -> Server {
        match kind {
            Kind::ApacheVhost => Apache::start(site, ApacheSetup::Vhost),
            Kind::ApacheHtaccess => Apache::start(site, ApacheSetup::Htaccess),
            Kind::ApacheHtaccessVarInWebRoot => {
                Apache::start(site, ApacheSetup::HtaccessVarInWebRoot)
            }
            Kind::NginxCgi => Nginx::start_cgi(site),
            Kind::NginxFastcgi => Nginx::start_fastcgi(site),
        }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The web root (a copy of deploy/site/).
    pub fn docroot(&self) -> &Path {
        &self.docroot
    }

    /// The URL path of executable `program`: `/cgi-bin/contact`, or `/cgi-bin/contact.cgi`
    /// on shared hosting, where the .cgi suffix selects the handler.
    pub fn path(&self, program: &str) -> String {
        match self.kind {
            Kind::ApacheHtaccess | Kind::ApacheHtaccessVarInWebRoot => {
                format!("/cgi-bin/{program}.cgi")
            }
            _ => format!("/cgi-bin/{program}"),
        }
    }

    /// Everything the server and its helpers logged so far (for failure messages).
    pub fn log(&self) -> String {
        read_logs(&self.logs)
    }

    /// A client with an empty cookie jar.
    pub fn client(&self) -> Client {
        Client::new(self.port)
    }

    /// The pids of every process the server runs right now (server, workers, helpers).
    pub fn pids(&self) -> Vec<u32> {
        self.groups
            .iter()
            .flat_map(|g| procs::group_members(g.pgid()))
            .collect()
    }
}
