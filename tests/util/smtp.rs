//! The SMTP server of the tests: aiosmtpd (tests/support/smtp_server.py) on a loopback
//! port, writing every accepted message into a maildir. Started by the test that needs it,
//! stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The SMTP server of the tests, stopped on drop.
pub struct Smtp {
    child: Child,
    pub maildir: PathBuf,
}

impl Smtp {
    pub fn start(dir: &Path, port: u16, args: &[&str]) -> Smtp {
        let maildir = dir.join(format!("maildir-{port}"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--maildir"])
            .arg(&maildir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd (scripts/install-test-deps.sh installs it)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server output");
        assert_eq!(line.trim(), "READY", "the SMTP server did not start");
        Smtp { child, maildir }
    }

    /// Every message the server accepted, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.maildir.join("new"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
