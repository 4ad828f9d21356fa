//! A real FTP server on loopback for the deploy tests: Debian's vsftpd, one instance per
//! test with a config of its own, explicit TLS (`AUTH TLS`, forced for login and data) with
//! a throw-away certificate for 127.0.0.1, or plain FTP for the refusal test. The uploads
//! arrive as a local account of their own (`fwdeploy`), so the files a deploy writes belong
//! to a different user than the web server's CGI processes (`nobody`), as on a shared host
//! that runs CGI under the web server's account.
//!
//! vsftpd starts as root (it switches to the logged-in account per session), so these
//! tests need root, as CI gives them; scripts/install-test-deps.sh installs vsftpd and lftp.

use super::net::free_port;
use super::servers::{Account, Group, user_ids};
use super::wait_for;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The uploading account and its password (a local account the tests create).
pub const USER: &str = "fwdeploy";
pub const PASSWORD: &str = "fw-deploy-test-password";
/// How long vsftpd may take to greet after its start.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How often a start is retried on a fresh port when another process took it first.
const PORT_ATTEMPTS: usize = 5;

/// Creates the uploading account once per test run (idempotent across runs): a home
/// folder vsftpd can enter, a shell that PAM's `pam_shells` accepts, and the password.
fn ensure_account() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        assert_eq!(
            Account::caller().uid(),
            0,
            "the FTP tests start vsftpd, which needs root (CI runs the suite as root)"
        );
        let home = Path::new("/var/lib/formwarden-test-ftp");
        std::fs::create_dir_all(home).expect("mkdir the FTP account's home");
        if user_ids(USER).is_none() {
            let st = Command::new("useradd")
                .args(["--no-create-home", "--shell", "/bin/sh", "--home-dir"])
                .arg(home)
                .arg(USER)
                .status()
                .expect("run useradd");
            assert!(st.success(), "useradd {USER}");
        }
        let mut chpasswd = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        std::io::Write::write_all(
            chpasswd.stdin.as_mut().expect("stdin"),
            format!("{USER}:{PASSWORD}\n").as_bytes(),
        )
        .expect("write chpasswd");
        assert!(chpasswd.wait().expect("chpasswd").success(), "chpasswd");
        let (uid, gid) = user_ids(USER).expect("useradd wrote the account to /etc/passwd");
        std::os::unix::fs::chown(home, Some(uid), Some(gid)).expect("chown home");
        (uid, gid)
    })
}

/// An account folder on the "host": what the FTP login lands in (vsftpd's `local_root`),
/// owned by the uploading account, readable by the web server's account.
pub struct AccountDir {
    dir: tempfile::TempDir,
}

impl AccountDir {
    pub fn new() -> AccountDir {
        let (uid, gid) = ensure_account();
        let dir = tempfile::Builder::new()
            .prefix("fw-ftp-home-")
            .tempdir()
            .expect("account folder");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod account folder");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown account folder");
        AccountDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// How an FTP server is set up.
#[derive(Debug, Clone, Copy)]
pub struct FtpSetup {
    /// Explicit TLS, forced for login and data; false: plain FTP only.
    pub tls: bool,
    /// Upload speed limit in bytes per second (0: none), to cut a deploy off half-way.
    pub max_rate: u64,
}

/// A running vsftpd for one account folder; stopped on drop.
pub struct Ftp {
    port: u16,
    cert: PathBuf,
    log: PathBuf,
    _group: Group,
    _dir: tempfile::TempDir,
}

impl Ftp {
    pub fn start(home: &AccountDir, setup: FtpSetup) -> Ftp {
        ensure_account();
        let dir = tempfile::Builder::new()
            .prefix("fw-ftpd-")
            .tempdir()
            .expect("ftp server folder");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(st.success(), "make the test certificate");
        let log = dir.path().join("vsftpd.log");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let conf = dir.path().join("vsftpd.conf");
            std::fs::write(&conf, config(home.path(), port, &cert, &key, &log, setup))
                .expect("write vsftpd.conf");
            let mut cmd = Command::new("vsftpd");
            cmd.arg(&conf);
            let group = Group::spawn(
                "vsftpd",
                cmd,
                &dir.path().join("stderr.log"),
                Account::caller(),
            );
            match wait_greeting(&group, port) {
                Ok(()) => {
                    return Ftp {
                        port,
                        cert,
                        log,
                        _group: group,
                        _dir: dir,
                    };
                }
                Err(e) => {
                    last = format!(
                        "{e}\n{}",
                        std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
                    );
                }
            }
        }
        panic!("vsftpd did not start in {PORT_ATTEMPTS} attempts: {last}");
    }

    /// The address a deploy is given (the login lands in the account folder).
    pub fn url(&self) -> String {
        format!("ftp://{USER}@127.0.0.1:{}", self.port)
    }

    /// The server's certificate, for `--ca-file`.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The server's protocol log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits for the `220` greeting.
fn wait_greeting(group: &Group, port: u16) -> Result<(), String> {
    wait_for(START_DEADLINE, || {
        if !group.is_running() {
            return Some(Err(format!("vsftpd exited (port {port} taken?)")));
        }
        greets(port).then_some(Ok(()))
    })
    .unwrap_or_else(|| Err("no greeting in time".into()))
}

/// True when a connection to `port` gets an FTP `220` greeting: a port that merely
/// accepts may be vsftpd before it is ready to serve, or another test's server.
fn greets(port: u16) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("220")
}

/// A standalone vsftpd on loopback for one account folder. The sandboxing options that
/// need namespaces or seccomp are off (containers often forbid them); everything about
/// logins, TLS and writes is as on a host.
fn config(root: &Path, port: u16, cert: &Path, key: &Path, log: &Path, setup: FtpSetup) -> String {
    let tls = if setup.tls {
        format!(
            "ssl_enable=YES\nrsa_cert_file={}\nrsa_private_key_file={}\n\
             force_local_logins_ssl=YES\nforce_local_data_ssl=YES\n",
            cert.display(),
            key.display()
        )
    } else {
        "ssl_enable=NO\n".to_string()
    };
    format!(
        "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
         anonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\nlocal_umask=022\n\
         local_root={root}\nchroot_local_user=YES\nallow_writeable_chroot=YES\n\
         pasv_enable=YES\npasv_address=127.0.0.1\npasv_min_port=30000\npasv_max_port=39999\n\
         seccomp_sandbox=NO\nisolate=NO\nisolate_network=NO\n\
         pam_service_name=vsftpd\nlocal_max_rate={rate}\n\
         vsftpd_log_file={log}\nxferlog_enable=YES\ndual_log_enable=YES\nlog_ftp_protocol=YES\n{tls}",
        root = root.display(),
        rate = setup.max_rate,
        log = log.display(),
    )
}
