//! The agent's `Config/Config.yml`, shared with the agent and replaceable
//! remotely. The updater reads only `LicenseKey` (newer agents:
//! `InsightAuthToken`) and `Webservice: {Endpoint, UseProxy, ProxyAddress}`;
//! the file is otherwise passed through as bytes, so every other key and
//! every comment survives.

use serde::Deserialize;
use thiserror::Error;

/// Why a `Config.yml` was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("Config.yml is not valid YAML")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    #[error("Config.yml is not UTF-8")]
    NotUtf8,
    #[error("Config.yml has no LicenseKey (or InsightAuthToken)")]
    NoLicenseKey,
    #[error("Config.yml has no Webservice.Endpoint")]
    NoEndpoint,
    #[error("Webservice.Endpoint {0:?} is not an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("Webservice.UseProxy is true but ProxyAddress {0:?} is not a URL")]
    BadProxy(String),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "LicenseKey", default)]
    license_key: Option<String>,
    #[serde(rename = "InsightAuthToken", default)]
    insight_auth_token: Option<String>,
    #[serde(rename = "Webservice", default)]
    webservice: Option<RawWebservice>,
}

#[derive(Deserialize)]
struct RawWebservice {
    #[serde(rename = "Endpoint", default)]
    endpoint: Option<String>,
    #[serde(rename = "UseProxy", default)]
    use_proxy: Option<bool>,
    #[serde(rename = "ProxyAddress", default)]
    proxy_address: Option<String>,
}

/// What the updater needs from `Config.yml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub license_key: String,
    /// The server's base URL, without a trailing slash.
    pub endpoint: String,
    /// The proxy to use, when `UseProxy` is true.
    pub proxy: Option<String>,
}

impl AgentConfig {
    /// Parses and validates the file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<AgentConfig, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8)?;
        let raw: Raw = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(Box::new(e)))?;
        let license_key = raw
            .license_key
            .or(raw.insight_auth_token)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::NoLicenseKey)?;
        let ws = raw.webservice.ok_or(ConfigError::NoEndpoint)?;
        let endpoint = ws
            .endpoint
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::NoEndpoint)?;
        let parsed =
            url::Url::parse(&endpoint).map_err(|_| ConfigError::BadEndpoint(endpoint.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ConfigError::BadEndpoint(endpoint));
        }
        let proxy = if ws.use_proxy.unwrap_or(false) {
            let p = ws.proxy_address.unwrap_or_default();
            url::Url::parse(&p).map_err(|_| ConfigError::BadProxy(p.clone()))?;
            Some(p)
        } else {
            None
        };
        Ok(AgentConfig {
            license_key,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            proxy,
        })
    }

    /// A legacy client's URL for `path`: `Endpoint + "/api/v1" + path`
    /// unless the path already starts with `/api/`.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("/api/") {
            format!("{}{}", self.endpoint, path)
        } else {
            format!("{}/api/v1{}", self.endpoint, path)
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    const GOOD: &str = "# agent settings\nLicenseKey: abc123\nWebservice:\n  Endpoint: https://insight.example:443/\n  UseProxy: false\nOther:\n  Keep: me\n";

    #[test]
    fn reads_what_the_updater_needs() {
        let c = AgentConfig::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.license_key, "abc123");
        assert_eq!(c.endpoint, "https://insight.example:443");
        assert_eq!(c.proxy, None);
        assert_eq!(c.url("/ping"), "https://insight.example:443/api/v1/ping");
        assert_eq!(
            c.url("/api/v2/checkin"),
            "https://insight.example:443/api/v2/checkin"
        );
        let newer = "InsightAuthToken: t0k\nWebservice: {Endpoint: 'http://h', UseProxy: true, ProxyAddress: 'http://proxy:3128'}\n";
        let c = AgentConfig::parse(newer.as_bytes()).unwrap();
        assert_eq!(c.license_key, "t0k");
        assert_eq!(c.proxy.as_deref(), Some("http://proxy:3128"));
    }

    #[test]
    fn refuses_bad_files() {
        let cases: &[(&str, &str)] = &[
            ("LicenseKey: [unclosed\n", "not valid YAML"),
            ("Webservice:\n  Endpoint: http://h\n", "no LicenseKey"),
            ("LicenseKey: k\n", "no Webservice.Endpoint"),
            (
                "LicenseKey: k\nWebservice: {Endpoint: 'ftp://h'}\n",
                "not an http",
            ),
            (
                "LicenseKey: k\nWebservice: {Endpoint: 'not a url'}\n",
                "not an http",
            ),
            (
                "LicenseKey: k\nWebservice: {Endpoint: 'http://h', UseProxy: true}\n",
                "ProxyAddress",
            ),
            ("- a list\n- not a map\n", "not valid YAML"),
        ];
        for (text, want) in cases {
            let err = AgentConfig::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(AgentConfig::parse(&[0xff, 0xfe]).is_err());
    }
}
