//! `preview`: README command #1. Serves `deploy/site/` on 127.0.0.1 and runs the real
//! executables next to this one as CGI processes; all logic is in the `formwarden-preview` crate (`preview/`).
use formwarden_preview::{self as preview, PreviewConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("formwarden preview: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (mut port, mut root) = (8080u16, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(v)) => port = v.parse().map_err(|_| format!("bad port {v:?}"))?,
            ("--root", Some(v)) => root = Some(PathBuf::from(v)),
            _ => return Err("usage: preview [--port N] [--root DIR]".into()),
        }
    }
    // The root is made absolute because every CGI process runs in the executables' folder.
    let root = root.map_or_else(std::env::current_dir, Ok);
    let root = root
        .and_then(std::path::absolute)
        .map_err(|e| format!("bad root: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let cfg = PreviewConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        site_dir: root.join("deploy/site"),
        cgi_dir: exe.parent().map(PathBuf::from).unwrap_or_default(),
        runtime_root: root,
    };
    // Checked before set-up, so that a start in the wrong folder creates no var/ there.
    cfg.check()?;
    if formwarden::setup::ensure_runtime(&cfg.runtime_root).map_err(|e| e.to_string())? {
        println!("created var/config/config.toml (fresh random ip_salt, mail to var/mail-out/)");
    }
    let server = preview::bind(cfg).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!("port {port} is in use; choose one with --port N"),
        _ => e.to_string(),
    })?;
    let port = server.local_addr().map_or(port, |a| a.port());
    println!("formwarden preview: http://127.0.0.1:{port}/  (mail goes to var/mail-out/)");
    server.run()
}
