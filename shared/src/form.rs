//! The contact form: strict parsing of an `application/x-www-form-urlencoded` body and
//! validation of every field before anything is stored or sent. Header-bound fields (name,
//! email, subject) must not contain line breaks of any kind or other control characters;
//! that is what keeps header injection out of the mail. This module never touches state.

use percent_encoding::percent_decode_str;
use std::collections::BTreeMap;

/// Field limits (characters).
pub const MAX_NAME: usize = 200;
/// Longest e-mail address (RFC 5321 path limit).
pub const MAX_EMAIL: usize = 254;
/// Longest subject.
pub const MAX_SUBJECT: usize = 200;
/// Longest message.
pub const MAX_MESSAGE: usize = 5000;

/// A field that failed validation, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The form field's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What can be wrong with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Empty or absent.
    Missing,
    /// Longer than the limit.
    TooLong(usize),
    /// Contains a line break (header injection attempt or paste accident).
    LineBreak,
    /// Contains another control character.
    Control,
    /// Not an e-mail address.
    BadEmail,
}

/// A validated contact message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contact {
    /// Sender's name.
    pub name: String,
    /// Sender's address (goes to `Reply-To` only).
    pub email: String,
    /// Subject (may be empty).
    pub subject: String,
    /// Message text.
    pub message: String,
}

/// The raw fields as posted (for re-filling the form after an error).
pub type Fields = BTreeMap<String, String>;

/// Parses a urlencoded body strictly: bad percent-escapes, invalid UTF-8 and repeated
/// fields are errors (a lenient parser would turn them into something the visitor did not
/// send).
pub fn parse_urlencoded(body: &[u8]) -> Result<Fields, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the form body is not UTF-8".to_string())?;
    if let Err(at) = escapes_well_formed(text) {
        return Err(format!("bad percent-escape at byte {at}"));
    }
    // Escapes are well-formed; decoded bytes must still be UTF-8, which serde_urlencoded
    // would paper over with U+FFFD, so each piece is decoded on its own first. A `+` (a
    // space in form encoding) is left as it is: it cannot change whether the bytes are UTF-8.
    for piece in text.split('&').flat_map(|kv| kv.splitn(2, '=')) {
        if percent_decode_str(piece).decode_utf8().is_err() {
            return Err("a form value is not UTF-8 after decoding".into());
        }
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Fields::new();
    for (k, v) in pairs {
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("field {k:?} appears more than once"));
        }
    }
    Ok(out)
}

/// Checks that every `%` in `s` starts a `%XX` escape of two hex digits; the error is the
/// byte offset of the first one that does not. Decoders (`form_urlencoded`, the
/// `percent-encoding` crate) pass a malformed escape through as text, which would let
/// `%2` or `%zz` slip past checks made on the decoded value, so callers scan first.
pub fn escapes_well_formed(s: &str) -> std::result::Result<(), usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return Err(i);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Decodes the `%XX` escapes of a URL path; `None` for a malformed escape. A `+` stays a
/// `+`: only form bodies spell a space that way.
pub fn percent_decode_strict(s: &str) -> Option<Vec<u8>> {
    escapes_well_formed(s).ok()?;
    Some(percent_decode_str(s).collect())
}

/// True for every character that ends a line somewhere: CR, LF, NEL, LS, PS, VT, FF.
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Checks a field that will end up in a mail header.
fn header_field(
    fields: &Fields,
    name: &'static str,
    max: usize,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> String {
    let v = fields.get(name).map(|s| s.trim()).unwrap_or("");
    let mut fail = |problem| {
        errors.push(FieldError {
            field: name,
            problem,
        })
    };
    if v.is_empty() {
        if required {
            fail(Problem::Missing);
        }
    } else if v.chars().any(is_line_break) {
        fail(Problem::LineBreak);
    } else if v.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        fail(Problem::Control);
    } else if v.chars().count() > max {
        fail(Problem::TooLong(max));
    }
    v.to_string()
}

/// Bidirectional overrides can make a header read differently from what it says.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A practical e-mail syntax check: `local@domain`, dot-atom local part, a domain with at
/// least one dot and labels of letters, digits and hyphens.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(atext));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && domain.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels.last().is_some_and(|tld| {
            tld.chars().count() >= 2 && !tld.chars().all(|c| c.is_ascii_digit())
        });
    local_ok && domain_ok
}

/// Validates the contact fields; every problem is reported, not just the first.
pub fn validate(fields: &Fields) -> Result<Contact, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = header_field(fields, "name", MAX_NAME, true, &mut errors);
    let email = header_field(fields, "email", MAX_EMAIL, true, &mut errors);
    if !email.is_empty() && !errors.iter().any(|e| e.field == "email") && !is_email(&email) {
        errors.push(FieldError {
            field: "email",
            problem: Problem::BadEmail,
        });
    }
    let subject = header_field(fields, "subject", MAX_SUBJECT, false, &mut errors);
    // The message body may have line breaks (normalized to CRLF later) and tabs, nothing
    // else from the control range.
    let message = fields
        .get("message")
        .map(|s| s.trim())
        .unwrap_or("")
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    if message.is_empty() {
        errors.push(FieldError {
            field: "message",
            problem: Problem::Missing,
        });
    } else if message
        .chars()
        .any(|c| (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c))
    {
        errors.push(FieldError {
            field: "message",
            problem: Problem::Control,
        });
    } else if message.chars().count() > MAX_MESSAGE {
        errors.push(FieldError {
            field: "message",
            problem: Problem::TooLong(MAX_MESSAGE),
        });
    }
    if errors.is_empty() {
        Ok(Contact {
            name,
            email,
            subject,
            message,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        // A malformed escape is an error, not a literal, so it cannot slip past the checks.
        assert_eq!(percent_decode_strict("/a%2Fb%2e"), Some(b"/a/b.".to_vec()));
        assert_eq!(percent_decode_strict("%"), None);
        assert_eq!(percent_decode_strict("%4"), None);
        assert_eq!(percent_decode_strict("%g0"), None);
        assert_eq!(percent_decode_strict("a+b"), Some(b"a+b".to_vec()));
    }

    #[test]
    fn escape_scan_names_the_first_bad_escape() {
        assert_eq!(escapes_well_formed("a%20b%2"), Err(5));
        assert_eq!(escapes_well_formed("%%41"), Err(0));
        assert_eq!(escapes_well_formed("a%41%42"), Ok(()));
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn strict_parsing_refuses_malformed_bodies() {
        assert!(parse_urlencoded(b"a=%zz").is_err());
        assert!(parse_urlencoded(b"a=%4").is_err());
        assert!(parse_urlencoded(b"a=%ff%fe").is_err());
        assert!(parse_urlencoded(b"a=1&a=2").is_err());
        assert!(parse_urlencoded(b"\xff").is_err());
        let f = parse_urlencoded(b"name=J%C3%BCrgen+M&x=").expect("valid");
        assert_eq!(f["name"], "Jürgen M");
    }

    #[test]
    fn header_injection_is_refused_in_every_header_field() {
        for field in ["name", "email", "subject"] {
            for evil in ["a\r\nBcc: x@y.z", "a\nb", "a\u{2028}b", "a\u{85}b", "a\0b"] {
                let mut f = fields(&[("name", "A"), ("email", "a@b.de"), ("message", "hi")]);
                f.insert(field.into(), evil.into());
                let errs = validate(&f).expect_err("must be refused");
                assert!(errs.iter().any(|e| e.field == field), "{field} {evil:?}");
            }
        }
    }

    #[test]
    fn emails() {
        for ok in ["a@b.de", "first.last+tag@sub.example.org", "x@müller.de"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "a@.de",
            "a..b@c.de",
            "a@b.1",
            "a b@c.de",
            "<a@b.de>",
            "a@-b.de",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn message_keeps_line_breaks_but_not_other_controls() {
        let ok = validate(&fields(&[
            ("name", "A"),
            ("email", "a@b.de"),
            ("message", "l1\r\nl2\tx"),
        ]))
        .expect("valid");
        assert_eq!(ok.message, "l1\nl2\tx");
        assert!(
            validate(&fields(&[
                ("name", "A"),
                ("email", "a@b.de"),
                ("message", "a\u{1b}[31m")
            ]))
            .is_err()
        );
    }
}
