//! `[http]`: the HTTP server's limits against slow clients and too many of them.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// `[http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileHttp {
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
}

/// Limits of the HTTP server against slow clients and too many of them.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request line and its headers, and how
    /// long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
}

/// Checks `[http]`: 1 to 65,536 connections, timeouts of 1 to 3,600 seconds.
pub(super) fn resolve(file: FileHttp) -> Result<HttpSettings, ConfigError> {
    let http = HttpSettings {
        max_connections: file.max_connections.unwrap_or(1024),
        header_timeout: Duration::from_secs(file.header_timeout_secs.unwrap_or(30)),
        body_timeout: Duration::from_secs(file.body_timeout_secs.unwrap_or(30)),
    };
    if !(1..=65_536).contains(&http.max_connections) {
        return Err(ConfigError::new(
            "http.max_connections",
            "must be between 1 and 65536",
        ));
    }
    for (key, value) in [
        ("http.header_timeout_secs", http.header_timeout),
        ("http.body_timeout_secs", http.body_timeout),
    ] {
        if !(1..=3600).contains(&value.as_secs()) {
            return Err(ConfigError::new(key, "must be between 1 and 3600"));
        }
    }
    Ok(http)
}
