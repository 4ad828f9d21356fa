//! Mail: building the message for a spooled contact and handing it to the configured
//! transport. Recipients and `From` only ever come from the config; the visitor's address
//! goes into `Reply-To` only, after validation.

/// Checks a configured mailbox (`addr@domain` or `Name <addr@domain>`).
pub fn check_mailbox(s: &str) -> Result<(), String> {
    let addr = match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => &s[i + 1..s.len() - 1],
        _ => s,
    };
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains control characters"));
    }
    let at = addr
        .rfind('@')
        .ok_or_else(|| format!("{s:?} is not an e-mail address"))?;
    if at == 0 || at + 1 == addr.len() || addr.contains(char::is_whitespace) {
        return Err(format!("{s:?} is not an e-mail address"));
    }
    Ok(())
}

/// The domain part of a configured mailbox, for `Message-ID`s.
pub fn domain_of(mailbox: &str) -> String {
    mailbox
        .trim_end_matches('>')
        .rsplit_once('@')
        .map_or("localhost", |(_, d)| d)
        .to_string()
}
