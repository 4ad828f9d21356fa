//! First-run set-up: creates the runtime tree and a fresh config with a random `ip_salt`
//! when none exists (used by the local preview). It never overwrites an existing config,
//! and it never touches state files: those belong to the services.

use crate::error::{Error, Result};
use crate::layout::Layout;
use std::path::Path;

/// Creates `var/`'s folders under `root` and, when missing, `var/config/config.toml` from
/// the example with a random salt and mail written to `var/mail-out/`. `true` when a
/// config was created.
pub fn ensure_runtime(root: &Path) -> Result<bool> {
    let layout = Layout::new(root);
    layout.create_state_dirs()?;
    for dir in [layout.config_dir(), layout.var().join("mail-out")] {
        crate::fsio::create_dir_all(&dir).map_err(|e| Error::io("create folder", &dir, e))?;
    }
    let config = layout.config_file();
    if crate::fsio::exists(&config) {
        return Ok(false);
    }
    let salt = crate::random::hex(&crate::random::bytes::<32>()?);
    let mail_out = layout.var().join("mail-out");
    let text = format!(
        "# Created by formwarden on first start. See var/config/config.example.toml for every key.\n\
         ip_salt = \"{salt}\"\n\
         site_name = \"formwarden preview\"\n\
         \n\
         [mail]\n\
         from = \"formwarden preview <formwarden@localhost>\"\n\
         to = [\"owner@localhost\"]\n\
         transport = \"file\"\n\
         \n\
         [mail.file]\n\
         dir = \"{}\"\n\
         \n\
         [tokens.profiles.admin]\n\
         grace_seconds = 3600\n",
        mail_out.display()
    );
    crate::atomic::create_new(&config, text.as_bytes())?;
    Ok(true)
}
