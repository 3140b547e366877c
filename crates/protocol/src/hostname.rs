//! Host names as they arrive from watchdogs: validated before any use, never a
//! raw path component, kept as the host wrote them and compared exactly, as
//! the original Insight Server does (`Legacy-Win-01` and `legacy-win-01`
//! are two hosts; a fleet's watchdogs each send their name the same way
//! every time, so nothing is lost, and nothing is shown other than it was
//! sent).

use thiserror::Error;

/// Why a host name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HostnameError {
    #[error("host name is empty")]
    Empty,
    #[error("host name is longer than 253 characters")]
    TooLong,
    #[error("host name has an empty label (leading, trailing or doubled dot)")]
    EmptyLabel,
    #[error("host name label is longer than 63 characters")]
    LabelTooLong,
    #[error("host name has a character that is not a letter, digit, '-' or '_': {0:?}")]
    BadChar(char),
    #[error("host name label starts or ends with '-'")]
    Hyphen,
}

/// Checks that `name` is a plausible DNS or NetBIOS host name and returns it
/// as written. Anything that could be read as a path (`/`, `\`, `..`,
/// `%`) is refused.
pub fn validate_hostname(name: &str) -> Result<String, HostnameError> {
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    if name.len() > 253 {
        return Err(HostnameError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostnameError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(HostnameError::LabelTooLong);
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(HostnameError::BadChar(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostnameError::Hyphen);
        }
    }
    Ok(name.to_string())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn accepts_plausible_names() {
        assert_eq!(
            validate_hostname("Web-01.Example.com").unwrap(),
            "Web-01.Example.com",
            "kept as written"
        );
        assert_eq!(validate_hostname("WIN_SRV7").unwrap(), "WIN_SRV7");
        assert!(validate_hostname("a").is_ok());
    }

    #[test]
    fn refuses_paths_and_garbage() {
        for bad in [
            "",
            "../x",
            "..",
            "a/b",
            "a\\b",
            "%2e%2e%2f",
            ".hidden",
            "a..b",
            "-a",
            "a-",
            "a b",
            "a\0b",
            "ä",
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            validate_hostname(&"a".repeat(64)),
            Err(HostnameError::LabelTooLong)
        );
        let long = vec!["a".repeat(60); 5].join(".");
        assert_eq!(validate_hostname(&long), Err(HostnameError::TooLong));
    }
}
