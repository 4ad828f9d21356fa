//! Spam screening of a contact message that passed validation and its CAPTCHA: the
//! honeypot field, and the content rules (links, gibberish names, a message repeating
//! another field, the operator's word and domain lists). Each rule's outcome is
//! configured: refuse with a page that says what to change, quarantine (saved, never sent
//! until the operator releases it), or allow. These are pure functions over the message
//! and the rules; this module never touches state, and it never decides to drop a message:
//! the worst it can say is "quarantine".

use crate::form::{Contact, Fields};

/// The honeypot's field name. Not a word that autofill heuristics know (name, e-mail,
/// address, phone, company, url, login), so password managers leave it alone; the pages
/// also mark it with the ignore attributes of the common managers.
pub const HONEYPOT_FIELD: &str = "fw_trap";

/// What a rule does with a message it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Refuse it with a page that says what to change; nothing is saved.
    Reject,
    /// Save it into the quarantine folder, never sent unless released.
    Quarantine,
    /// Let it through.
    Allow,
}

/// Which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The hidden field was filled in.
    Honeypot,
    /// Posted sooner after its challenge was issued than a person can fill the form.
    TooSoon,
    /// More links than allowed.
    Links,
    /// A random-looking mixed-case name such as `wYrHwDwEgDCx`.
    GibberishName,
    /// The message repeats the name, e-mail or subject.
    RepeatedField,
    /// A word from `var/config/blocked-words.txt`.
    BlockedWord,
    /// A domain from `var/config/blocked-domains.txt` (sender address or link).
    BlockedDomain,
}

impl Rule {
    /// The name used in the log, the quarantine record and the JSON answer.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Honeypot => "honeypot",
            Rule::TooSoon => "too_soon",
            Rule::Links => "links",
            Rule::GibberishName => "gibberish_name",
            Rule::RepeatedField => "repeated_field",
            Rule::BlockedWord => "blocked_word",
            Rule::BlockedDomain => "blocked_domain",
        }
    }
}

/// A matched rule with its configured action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule.
    pub rule: Rule,
    /// What to do.
    pub action: Action,
}

/// The content rules as configured (`[spam]` and the two list files).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Links allowed in subject and message together.
    pub max_links: usize,
    /// For more links than that.
    pub links: Action,
    /// For a gibberish name.
    pub gibberish_names: Action,
    /// For a message that repeats another field.
    pub repeated_fields: Action,
    /// For a blocked word.
    pub blocked_words: Action,
    /// For a blocked domain.
    pub blocked_domains: Action,
    /// Lower-case words and phrases.
    pub word_list: Vec<String>,
    /// Lower-case domains; each also blocks its sub-domains.
    pub domain_list: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_links: 2,
            links: Action::Quarantine,
            gibberish_names: Action::Quarantine,
            repeated_fields: Action::Quarantine,
            blocked_words: Action::Quarantine,
            blocked_domains: Action::Quarantine,
            word_list: Vec::new(),
            domain_list: Vec::new(),
        }
    }
}

/// What happens to the message as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Save and send.
    Deliver,
    /// Save into quarantine, for these rules.
    Quarantine(Vec<Rule>),
    /// Refuse, for these rules (the page names what to change).
    Reject(Vec<Rule>),
}

/// True when the honeypot holds anything but whitespace.
pub fn honeypot_filled(fields: &Fields) -> bool {
    fields
        .get(HONEYPOT_FIELD)
        .is_some_and(|v| !v.trim().is_empty())
}

/// Every content rule that matches `contact`, with its action (rules set to `allow` are
/// not reported).
pub fn findings(contact: &Contact, rules: &Rules) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |rule: Rule, action: Action, hit: bool| {
        if hit && action != Action::Allow {
            out.push(Finding { rule, action });
        }
    };
    // Every rule below compares lower-case text; it is made once.
    let text = format!("{}\n{}", contact.subject, contact.message).to_lowercase();
    add(
        Rule::Links,
        rules.links,
        count_lower_links(&text) > rules.max_links,
    );
    add(
        Rule::GibberishName,
        rules.gibberish_names,
        is_gibberish_name(&contact.name),
    );
    add(
        Rule::RepeatedField,
        rules.repeated_fields,
        repeats_a_field(contact),
    );
    let all = format!("{}\n{}", contact.name.to_lowercase(), text);
    add(
        Rule::BlockedWord,
        rules.blocked_words,
        rules.word_list.iter().any(|w| contains_word(&all, w)),
    );
    let mut hosts = link_hosts(&text);
    if let Some((_, domain)) = contact.email.rsplit_once('@') {
        hosts.push(domain.to_lowercase());
    }
    add(
        Rule::BlockedDomain,
        rules.blocked_domains,
        hosts
            .iter()
            .any(|h| rules.domain_list.iter().any(|d| is_within(h, d))),
    );
    out
}

/// The verdict from the findings: any refusal wins (the visitor can fix it and send
/// again), then quarantine, else delivery.
pub fn verdict(findings: &[Finding]) -> Verdict {
    let of = |a: Action| -> Vec<Rule> {
        findings
            .iter()
            .filter(|f| f.action == a)
            .map(|f| f.rule)
            .collect()
    };
    let rejected = of(Action::Reject);
    if !rejected.is_empty() {
        return Verdict::Reject(rejected);
    }
    let held = of(Action::Quarantine);
    if !held.is_empty() {
        return Verdict::Quarantine(held);
    }
    Verdict::Deliver
}

/// Links in `text`: `http://`, `https://`, `www.` and BBCode `[url`, case-insensitively.
pub fn count_links(text: &str) -> usize {
    count_lower_links(&text.to_lowercase())
}

/// [`count_links`] of text that is lower-case already.
fn count_lower_links(t: &str) -> usize {
    ["http://", "https://", "[url"]
        .iter()
        .map(|p| t.matches(p).count())
        .sum::<usize>()
        // A "www." right after a scheme is the same link.
        + t.match_indices("www.")
            .filter(|(i, _)| !t[..*i].ends_with("://"))
            .count()
}

/// The host names of the links in lower-case `t`.
fn link_hosts(t: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    for prefix in ["http://", "https://", "www."] {
        for (i, _) in t.match_indices(prefix) {
            let start = if prefix == "www." {
                i
            } else {
                i + prefix.len()
            };
            let host: String = t[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '-')
                .collect();
            let host = host.trim_start_matches("www.").trim_end_matches('.');
            if !host.is_empty() {
                hosts.push(host.to_string());
            }
        }
    }
    hosts
}

/// True when `host` is `domain` or one of its sub-domains.
fn is_within(host: &str, domain: &str) -> bool {
    host == domain
        || host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// True when `needle` (lower-case) occurs in `haystack` (lower-case) as whole words: not
/// inside a longer word ("sex" does not match "Essex").
fn contains_word(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    haystack.match_indices(needle).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// A random-looking mixed-case word: at least 6 ASCII letters, neither all capitals nor
/// capitalised normally, with the case changing at least 5 times and at more than half
/// of its letters. `wYrHwDwEgDCx` changes 10 times in 12 letters; real names with inner
/// capitals stay at or below half (`McDonald` 2, `VanDerBerg` 5 in 10, `DeShawn` 2).
pub fn is_gibberish_name(name: &str) -> bool {
    name.split_whitespace().any(|word| {
        let letters: Vec<char> = word.chars().collect();
        if letters.len() < 6 || !letters.iter().all(char::is_ascii_alphabetic) {
            return false;
        }
        if letters.iter().all(char::is_ascii_uppercase) {
            return false;
        }
        let changes = letters
            .windows(2)
            .filter(|w| w[0].is_ascii_uppercase() != w[1].is_ascii_uppercase())
            .count();
        changes >= 5 && changes * 2 > letters.len()
    })
}

/// True when the message is nothing but the name, the address or the subject.
fn repeats_a_field(contact: &Contact) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let message = norm(&contact.message);
    !message.is_empty()
        && [&contact.name, &contact.email, &contact.subject]
            .iter()
            .any(|f| norm(f) == message)
}

/// Parses a word or domain list file: one entry per line, `#` starts a comment, blank
/// lines are ignored, entries are compared lower-case.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_lowercase())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(name: &str, subject: &str, message: &str) -> Contact {
        Contact {
            name: name.into(),
            email: "ada@example.net".into(),
            subject: subject.into(),
            message: message.into(),
        }
    }

    #[test]
    fn gibberish_names_are_told_from_real_ones() {
        for g in ["wYrHwDwEgDCx", "bXkQeRtZuP", "Ada qWeRtYuIoP", "mKjHgFdSaQ"] {
            assert!(is_gibberish_name(g), "{g}");
        }
        for real in [
            "Ada Lovelace",
            "McDonald",
            "MacKenzie",
            "VanDerBerg",
            "DeShawn O'Neil",
            "JOHN SMITH",
            "José Núñez",
            "李小龍",
            "Jean-Luc Picard",
            "DiCaprio",
            "al-Khwarizmi",
            "Bo",
        ] {
            assert!(!is_gibberish_name(real), "{real}");
        }
    }

    #[test]
    fn links_are_counted_once_each() {
        assert_eq!(count_links("see https://www.example.org and www.x.de"), 2);
        assert_eq!(count_links("HTTP://A.B [url=http://c]x[/url]"), 3);
        assert_eq!(count_links("no links, just www"), 0);
    }

    #[test]
    fn rules_report_only_what_is_not_allowed() {
        let rules = Rules {
            word_list: vec!["casino".into(), "cheap pills".into()],
            domain_list: vec!["spam.test".into()],
            ..Rules::default()
        };
        let ok = contact("Ada", "Hello", "A question about https://example.org/page");
        assert_eq!(findings(&ok, &rules), vec![]);
        let rules_of = |c: &Contact| -> Vec<Rule> {
            findings(c, &rules).into_iter().map(|f| f.rule).collect()
        };
        let spam = contact("Ada", "x", "http://a.test http://b.test http://c.test");
        assert_eq!(rules_of(&spam), vec![Rule::Links]);
        assert_eq!(
            rules_of(&contact("Ada", "Hi", "Hi")),
            vec![Rule::RepeatedField]
        );
        assert_eq!(
            rules_of(&contact("Ada", "Best CASINO", "text")),
            vec![Rule::BlockedWord]
        );
        assert_eq!(rules_of(&contact("Ada", "Essex casinos", "text")), vec![]);
        assert_eq!(
            rules_of(&contact("Ada", "x", "buy at https://shop.spam.test/")),
            vec![Rule::BlockedDomain]
        );
        assert_eq!(
            rules_of(&contact("Ada", "x", "nospam.test is fine")),
            vec![]
        );
        let mut from_blocked = contact("Ada", "x", "text");
        from_blocked.email = "bot@mail.spam.test".into();
        assert_eq!(rules_of(&from_blocked), vec![Rule::BlockedDomain]);
        let allowed = Rules {
            links: Action::Allow,
            ..rules.clone()
        };
        assert_eq!(findings(&spam, &allowed), vec![]);
    }

    #[test]
    fn a_refusal_wins_over_quarantine() {
        let f = |rule, action| Finding { rule, action };
        assert_eq!(verdict(&[]), Verdict::Deliver);
        assert_eq!(
            verdict(&[f(Rule::Links, Action::Quarantine)]),
            Verdict::Quarantine(vec![Rule::Links])
        );
        assert_eq!(
            verdict(&[
                f(Rule::Links, Action::Quarantine),
                f(Rule::BlockedWord, Action::Reject)
            ]),
            Verdict::Reject(vec![Rule::BlockedWord])
        );
    }

    #[test]
    fn lists_skip_comments_and_blank_lines() {
        assert_eq!(
            parse_list("# words\nCasino\n\n  viagra  # pills\n"),
            vec!["casino", "viagra"]
        );
    }

    #[test]
    fn the_honeypot_counts_only_when_filled() {
        let mut f = Fields::new();
        assert!(!honeypot_filled(&f));
        f.insert(HONEYPOT_FIELD.into(), "  ".into());
        assert!(!honeypot_filled(&f));
        f.insert(HONEYPOT_FIELD.into(), "http://x".into());
        assert!(honeypot_filled(&f));
    }
}
