//! Target specs: one upstream target as written (`IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`,
//! with its weight), parsed from `targets`, a targets file's entries or an etcd value. Every
//! discovery source builds on these; this module imports none of them.

use std::net::{IpAddr, SocketAddr};

/// A target as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetSpec {
    pub host: String,
    pub port: u16,
    pub weight: usize,
}

impl TargetSpec {
    /// Parse `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`.
    pub(crate) fn parse(address: &str, weight: usize) -> Result<Self, String> {
        if let Ok(sa) = address.parse::<SocketAddr>() {
            return Ok(TargetSpec {
                host: sa.ip().to_string(),
                port: sa.port(),
                weight,
            });
        }
        let bad = || {
            format!("invalid target address {address:?}; write IP:PORT or NAME:PORT, e.g. \"10.0.0.5:8080\" or \"users.internal:8080\"")
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid || port == 0 {
            return Err(bad());
        }
        Ok(TargetSpec {
            host: host.to_ascii_lowercase(),
            port,
            weight,
        })
    }

    pub(crate) fn is_name(&self) -> bool {
        self.host.parse::<IpAddr>().is_err()
    }
}

/// One target as a document: an entry of a targets file, or an etcd value.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTarget {
    pub(super) address: String,
    #[serde(default = "one")]
    weight: usize,
    /// Free-form, for the tools that write the file; not read.
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
}

fn one() -> usize {
    1
}

/// One target as a JSON document (`{"address": ..., "weight": ...}`): an etcd value.
pub(crate) fn parse_target_value(text: &str) -> Result<TargetSpec, String> {
    let t: FileTarget = serde_json::from_str(text).map_err(|e| e.to_string())?;
    t.spec()
}

impl FileTarget {
    /// The target, its weight within the range `targets` have.
    pub(super) fn spec(&self) -> Result<TargetSpec, String> {
        use crate::config::bounds::{MAX_WEIGHT, TARGET_WEIGHT};
        if !TARGET_WEIGHT.contains(self.weight) {
            return Err(format!("weight must be 1 to {MAX_WEIGHT}"));
        }
        TargetSpec::parse(&self.address, self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs() {
        assert_eq!(
            TargetSpec::parse("10.0.0.1:80", 1).unwrap().host,
            "10.0.0.1"
        );
        assert!(!TargetSpec::parse("[::1]:80", 1).unwrap().is_name());
        assert!(TargetSpec::parse("Users.Internal:8080", 2)
            .unwrap()
            .is_name());
        assert_eq!(
            TargetSpec::parse("Users.Internal:8080", 2).unwrap().host,
            "users.internal"
        );
        for bad in ["nope", "a:b", "host:0", "bad_name:80", ":80"] {
            assert!(TargetSpec::parse(bad, 1).is_err(), "{bad}");
        }
    }
}
