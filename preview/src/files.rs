//! The static half of the preview: maps a URL path to a file of the example site and
//! serves it with its content type. It must never serve a file outside the site folder
//! (checked after decoding and again on the canonical path, which catches `..` in any
//! spelling and symlinks pointing out), nor a hidden file such as `.htaccess`.

use crate::MAX_STATIC_FILE;
use crate::reply::Reply;
use formwarden::form::percent_decode_strict;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Maps a URL path to a regular file inside `site_dir` (which must be canonical), or `None`.
///
/// Segments are checked after percent-decoding, so `%2e%2e` and `..%2f` are caught like a
/// literal `..`; segments starting with a dot are refused outright (that covers `.`, `..` and
/// hidden files such as `.htaccess`); and the canonical result must still lie inside
/// `site_dir`, which catches symlinks pointing out of it.
fn resolve_static(site_dir: &Path, url_path: &str) -> Option<PathBuf> {
    if !url_path.starts_with('/') {
        return None;
    }
    let decoded = String::from_utf8(percent_decode_strict(url_path)?).ok()?;
    let mut candidate = site_dir.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return None;
        }
        candidate.push(segment);
    }
    if candidate.is_dir() {
        candidate.push("index.html");
    }
    let real = candidate.canonicalize().ok()?;
    (real.starts_with(site_dir) && real.is_file()).then_some(real)
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

pub(crate) fn serve_static(site_dir: &Path, url_path: &str) -> Reply {
    let Some(file) = resolve_static(site_dir, url_path) else {
        return Reply::error(404);
    };
    let read = fs::File::open(&file).and_then(|f| {
        let mut body = Vec::new();
        f.take(MAX_STATIC_FILE + 1).read_to_end(&mut body)?;
        Ok(body)
    });
    match read {
        Ok(body) if body.len() as u64 <= MAX_STATIC_FILE => Reply {
            status: 200,
            reason: "OK".into(),
            headers: vec![
                ("Content-Type".into(), content_type(&file).into()),
                // A preview should always show the file as it is on disk right now.
                ("Cache-Control".into(), "no-cache".into()),
                ("X-Content-Type-Options".into(), "nosniff".into()),
            ],
            body,
        },
        Ok(_) => Reply::error(404),
        Err(e) => {
            eprintln!("preview: cannot read {}: {e}", file.display());
            Reply::error(500)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn static_paths_never_leave_the_site_directory() {
        // Traversal in every spelling, hidden files and escaping symlinks all resolve to
        // nothing; ordinary files and directory indexes resolve inside the site.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let site = root.join("site");
        fs::create_dir_all(site.join("sub")).unwrap();
        fs::write(site.join("index.html"), "index").unwrap();
        fs::write(site.join("style.css"), "css").unwrap();
        fs::write(site.join("sub/index.html"), "sub").unwrap();
        fs::write(site.join(".htaccess"), "hidden").unwrap();
        fs::write(root.join("secret.txt"), "secret").unwrap();
        symlink(root.join("secret.txt"), site.join("escape.txt")).unwrap();
        symlink(&root, site.join("up")).unwrap();
        symlink(site.join("style.css"), site.join("alias.css")).unwrap();

        let ok = |p: &str| resolve_static(&site, p);
        assert_eq!(ok("/"), Some(site.join("index.html")));
        assert_eq!(ok("/index.html"), Some(site.join("index.html")));
        assert_eq!(ok("/style.css"), Some(site.join("style.css")));
        assert_eq!(ok("/sub"), Some(site.join("sub/index.html")));
        assert_eq!(ok("/sub/"), Some(site.join("sub/index.html")));
        assert_eq!(ok("//style.css"), Some(site.join("style.css")));
        assert_eq!(ok("/%73tyle.css"), Some(site.join("style.css")));
        assert_eq!(ok("/alias.css"), Some(site.join("style.css")));
        for bad in [
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/..%2fsecret.txt",
            "/sub/%2e%2e/%2e%2e/secret.txt",
            "/./index.html",
            "/.htaccess",
            "/escape.txt",
            "/up/secret.txt",
            "/missing.html",
            "/bad%zzescape",
            "/%00",
            "/sub%5c..%5c..%5csecret.txt",
            "index.html",
            "*",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
        // A symlink that leaves and comes back ends inside the site, which is all that counts.
        assert_eq!(ok("/up/site/index.html"), Some(site.join("index.html")));
        // An absolute path in the URL still resolves below the site, never to the real root.
        assert_eq!(ok(&format!("/{}", root.join("secret.txt").display())), None);
    }

    #[test]
    fn content_types_follow_the_extension() {
        // The preview must label the site's own file types correctly for browsers.
        assert_eq!(
            content_type(Path::new("a/index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("style.CSS")),
            "text/css; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("a.svg")), "image/svg+xml");
        assert_eq!(content_type(Path::new("favicon.ico")), "image/x-icon");
        assert_eq!(
            content_type(Path::new("README")),
            "application/octet-stream"
        );
    }
}
