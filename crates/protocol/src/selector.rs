//! Label selectors: `role=web,site!=us,canary` picks the hosts whose labels
//! satisfy every term. Terms: `key=value`, `key!=value` (also true when the
//! host has no such label), `key` (has the label), `!key` (has not). A
//! host's labels are its own (the watchdog's `labels:` setting) overlaid
//! with those an operator assigned. The pseudo-label `host` is the host's
//! name, so `host=web-1` picks one host. Parsing only, no I/O.

use std::collections::BTreeMap;
use std::fmt;

/// A host's labels, key → value.
pub type Labels = BTreeMap<String, String>;

/// Longest selector accepted.
pub const MAX_SELECTOR_LEN: usize = 1024;
/// Most labels a host may carry (its own and assigned ones, each).
pub const MAX_LABELS: usize = 64;

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Has(String),
    HasNot(String),
}

/// A parsed selector; the empty selector matches every host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    terms: Vec<Term>,
    text: String,
}

/// Why a selector or a label is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("the selector is {0} characters long, more than {MAX_SELECTOR_LEN}")]
    TooLong(usize),
    #[error("{0:?} is not a selector term (key=value, key!=value, key or !key)")]
    BadTerm(String),
    #[error("label key {0:?} must be 1-63 letters, digits, '-', '_', '.' or '/'")]
    BadKey(String),
    #[error("label value {0:?} must be at most 63 letters, digits, '-', '_' or '.'")]
    BadValue(String),
    #[error("more than {MAX_LABELS} labels")]
    TooMany,
}

/// Checks a label key.
pub fn check_key(k: &str) -> Result<(), SelectorError> {
    let ok = !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(SelectorError::BadKey(k.to_string()))
    }
}

/// Checks a label value (may be empty).
pub fn check_value(v: &str) -> Result<(), SelectorError> {
    let ok = v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SelectorError::BadValue(v.to_string()))
    }
}

/// Checks a whole label set.
pub fn check_labels(labels: &Labels) -> Result<(), SelectorError> {
    if labels.len() > MAX_LABELS {
        return Err(SelectorError::TooMany);
    }
    for (k, v) in labels {
        check_key(k)?;
        check_value(v)?;
    }
    Ok(())
}

impl Selector {
    /// Parses `text`; blanks around terms are ignored.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong(text.len()));
        }
        let mut terms = Vec::new();
        for raw in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let term = if let Some((k, v)) = raw.split_once("!=") {
                let (k, v) = (k.trim(), v.trim());
                check_key(k)?;
                check_value(v)?;
                Term::Ne(k.into(), v.into())
            } else if let Some((k, v)) = raw.split_once('=') {
                let (k, v) = (k.trim(), v.trim());
                check_key(k)?;
                check_value(v)?;
                Term::Eq(k.into(), v.into())
            } else if let Some(k) = raw.strip_prefix('!') {
                check_key(k.trim())?;
                Term::HasNot(k.trim().into())
            } else {
                check_key(raw).map_err(|_| SelectorError::BadTerm(raw.to_string()))?;
                Term::Has(raw.into())
            };
            terms.push(term);
        }
        let text = terms
            .iter()
            .map(|t| match t {
                Term::Eq(k, v) => format!("{k}={v}"),
                Term::Ne(k, v) => format!("{k}!={v}"),
                Term::Has(k) => k.clone(),
                Term::HasNot(k) => format!("!{k}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok(Selector { terms, text })
    }

    /// The selector matching every host.
    pub fn all() -> Selector {
        Selector::default()
    }

    pub fn is_all(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether host `name` with `labels` satisfies every term.
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        let get = |k: &str| -> Option<&str> {
            if k == "host" {
                Some(name)
            } else {
                labels.get(k).map(String::as_str)
            }
        };
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) => get(k) == Some(v.as_str()),
            Term::Ne(k, v) => get(k) != Some(v.as_str()),
            Term::Has(k) => get(k).is_some(),
            Term::HasNot(k) => get(k).is_none(),
        })
    }
}

/// The canonical text (terms as parsed, blanks removed).
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn terms_match_as_documented() {
        let web_eu = labels(&[("role", "web"), ("site", "eu")]);
        let web_us = labels(&[("role", "web"), ("site", "us")]);
        let bare = Labels::new();
        let s = Selector::parse("role=web, site!=us").unwrap();
        assert!(s.matches("a", &web_eu));
        assert!(!s.matches("b", &web_us));
        assert!(!s.matches("c", &bare));
        assert_eq!(s.to_string(), "role=web,site!=us");
        // != is true without the label.
        assert!(Selector::parse("site!=us").unwrap().matches("c", &bare));
        assert!(Selector::parse("site").unwrap().matches("a", &web_eu));
        assert!(!Selector::parse("!site").unwrap().matches("a", &web_eu));
        assert!(Selector::parse("host=a").unwrap().matches("a", &bare));
        assert!(!Selector::parse("host=a").unwrap().matches("b", &bare));
        let all = Selector::parse(" ").unwrap();
        assert!(all.is_all() && all.matches("x", &bare));
    }

    #[test]
    fn bad_selectors_are_refused_with_the_reason() {
        for bad in ["role==web", "ro le=web", "=web", "role=w b", "!", "a=b=c"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Selector::parse(&"a".repeat(2000)),
            Err(SelectorError::TooLong(2000))
        );
        assert!(check_labels(&labels(&[("ok", "fine")])).is_ok());
        assert!(check_labels(&labels(&[("bad key", "x")])).is_err());
    }
}
