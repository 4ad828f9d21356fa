//! Real FastCGI responders for the tests: the executables started by Debian's `spawn-fcgi`,
//! which binds the socket, puts it on fd 0 and execs the executable, exactly as in a
//! deployment. A guard stops every process it started when the test ends, even on failure.

use super::client::{Endpoint, GET_VALUES, GET_VALUES_RESULT, pairs, record};
use crate::util::net::free_port;
use crate::util::{exe, procs, wait_for};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What the responder logs when it closes on a peer not in `FCGI_WEB_SERVER_ADDRS`.
pub const REFUSED_PEER_LOG: &str = "refused a connection from a peer not in FCGI_WEB_SERVER_ADDRS";

/// How to start one responder.
pub struct Spawn {
    bin: String,
    /// The executable to start; `bin`'s test build unless set.
    exe: Option<PathBuf>,
    tcp: bool,
    children: usize,
    env: Vec<(String, String)>,
}

/// A running responder: one process (`-n`, spawn-fcgi execs the executable itself), or
/// several forked by spawn-fcgi (`-F n`), tracked by their pids.
pub struct Responder {
    pub endpoint: Endpoint,
    child: Option<Child>,
    pids: Vec<u32>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Spawn {
    /// A responder for executable `bin` serving the runtime tree at `root`, on a unix
    /// socket, one process. The root is part of the responder's start (its environment),
    /// as in a deployment: requests cannot choose it.
    pub fn unix(bin: &str, root: &Path) -> Spawn {
        Spawn {
            bin: bin.to_string(),
            exe: None,
            tcp: false,
            children: 1,
            env: vec![("FORMWARDEN_ROOT".into(), root.display().to_string())],
        }
    }

    /// The same on 127.0.0.1 and a free port.
    pub fn tcp(bin: &str, root: &Path) -> Spawn {
        Spawn {
            tcp: true,
            ..Spawn::unix(bin, root)
        }
    }

    /// Starts `exe` (another build of `bin`, e.g. the release profile's) instead.
    pub fn exe(mut self, exe: PathBuf) -> Spawn {
        self.exe = Some(exe);
        self
    }

    /// `n` processes forked by spawn-fcgi, all accepting on the one socket.
    pub fn children(mut self, n: usize) -> Spawn {
        self.children = n;
        self
    }

    /// A variable in the responder's process environment (never a request's).
    pub fn env(mut self, k: &str, v: &str) -> Spawn {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Starts it and waits until it accepts connections.
    pub fn start(self) -> Responder {
        // A free port can be taken by someone else between our probe and spawn-fcgi's bind;
        // then spawn-fcgi fails and we try another.
        let mut log = String::new();
        for _ in 0..5 {
            match self.try_start() {
                Ok(r) => return r,
                Err(l) => log = l,
            }
        }
        panic!(
            "{} did not serve FastCGI under spawn-fcgi; its log:\n{log}",
            self.bin
        );
    }

    /// Starts the responder; on failure returns what it logged.
    fn try_start(&self) -> Result<Responder, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("responder.log");
        let pidfile = dir.path().join("responder.pid");
        let mut cmd = Command::new("spawn-fcgi");
        let endpoint = if self.tcp {
            let port = free_port();
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
        } else {
            let sock = dir.path().join("fcgi.sock");
            cmd.arg("-s").arg(&sock);
            Endpoint::Unix(sock)
        };
        if self.children == 1 {
            cmd.arg("-n");
        } else {
            cmd.arg("-F")
                .arg(self.children.to_string())
                .arg("-P")
                .arg(&pidfile);
        }
        cmd.arg("--")
            .arg(self.exe.clone().unwrap_or_else(|| exe(&self.bin)));
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        let mut child = cmd
            .spawn()
            .expect("run spawn-fcgi (scripts/install-test-deps.sh)");
        let mut r = Responder {
            endpoint,
            child: None,
            pids: Vec::new(),
            log,
            _dir: dir,
        };
        if self.children == 1 {
            // With -n, spawn-fcgi binds and then execs the executable in the same process.
            r.child = Some(child);
        } else {
            // Without -n, spawn-fcgi forks the children, writes their pids and exits.
            let ok = child.wait().expect("wait for spawn-fcgi").success();
            let pids = std::fs::read_to_string(&pidfile).unwrap_or_default();
            r.pids = pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if !ok || r.pids.len() != self.children {
                return Err(r.log());
            }
        }
        // Ready means answering FastCGI, not just a socket that accepts: spawn-fcgi binds
        // it before the executable runs, so connecting alone proves nothing.
        let ready = wait_for(Duration::from_secs(10), || {
            if !r.alive() {
                return Some(false);
            }
            // A responder told to refuse us (FCGI_WEB_SERVER_ADDRS) is ready once it has
            // accepted and refused the probe.
            (r.answers_get_values() || r.log().contains(REFUSED_PEER_LOG)).then_some(true)
        });
        if ready == Some(true) {
            Ok(r)
        } else {
            Err(r.log())
        }
    }
}

impl Responder {
    /// True while every process of this responder runs.
    pub fn alive(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            return matches!(c.try_wait(), Ok(None));
        }
        self.pids.iter().all(|&p| procs::running(p))
    }

    /// True when the responder answers FCGI_GET_VALUES.
    fn answers_get_values(&self) -> bool {
        let Ok(mut c) = self.endpoint.connect() else {
            return false;
        };
        let query = pairs([("FCGI_MPXS_CONNS", "")]);
        c.write_all(&record(GET_VALUES, 0, &query)).is_ok()
            && matches!(c.read_record(), Ok((GET_VALUES_RESULT, 0, _)))
    }

    /// Threads of the (first) responder process; 0 when it is gone.
    pub fn threads(&self) -> usize {
        self.child
            .as_ref()
            .map(Child::id)
            .or(self.pids.first().copied())
            .and_then(procs::threads)
            .unwrap_or(0)
    }

    /// What the responder logged so far (single-process responders only; forked children
    /// log to /dev/null, as spawn-fcgi arranges).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &p in &self.pids {
            procs::kill_hard(p as i32);
        }
    }
}
