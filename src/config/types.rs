//! Typed scalars: configuration strings that mean something, parsed when the file is read
//! (`#[serde(try_from = "String")]`), so a bad value is reported with its key path before
//! anything is built and nothing downstream parses the string again.

use super::problem::Problem;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Most worker threads (`server.threads`; the default, one per CPU, is capped here too).
pub const MAX_THREADS: usize = 1024;

/// A size written as `"32KiB"`, `"10MB"`, `"1048576"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct HumanSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeText> for HumanSize {
    type Error = String;
    fn try_from(s: SizeText) -> Result<Self, Self::Error> {
        match s {
            SizeText::Number(n) => Ok(HumanSize(n)),
            SizeText::Text(t) => t
                .parse::<bytesize::ByteSize>()
                .map(|b| HumanSize(b.as_u64()))
                .map_err(|e| format!("invalid size {t:?} ({e}); write e.g. \"64KiB\", \"10MB\"")),
        }
    }
}

/// A duration written as `"250ms"`, `"5s"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"5s\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                HumanDuration::try_from(s.to_string()).map_err(E::custom)
            }
            // A bare number has no unit: say which string was probably meant.
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "expected a duration like \"5s\", got the number {n}; write \"{n}s\" or \"{n}ms\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<HumanDuration, E> {
                self.visit_i64(n as i64)
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "expected a duration like \"5s\", got the number {n}; write e.g. \"{n}s\""
                )))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"5s\", \"2m\"")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An authentication method a route accepts: `"api_key"`, `"jwt:PROVIDER"`, `"forward:NAME"`
/// or `"introspection:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum AuthRef {
    /// `api_key`: a consumer's key.
    ApiKey,
    /// `jwt:PROVIDER`: a token of `[auth.jwt.PROVIDER]`.
    Jwt(String),
    /// `[auth.forward.NAME]`: ask an auth service.
    Forward(String),
    /// `[auth.introspection.NAME]`: RFC 7662 token introspection.
    Introspection(String),
}

impl TryFrom<String> for AuthRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "api_key" => Ok(AuthRef::ApiKey),
            Some(("jwt", p)) if !p.is_empty() => Ok(AuthRef::Jwt(p.to_string())),
            Some(("forward", p)) if !p.is_empty() => Ok(AuthRef::Forward(p.to_string())),
            Some(("introspection", p)) if !p.is_empty() => {
                Ok(AuthRef::Introspection(p.to_string()))
            }
            _ => Err(format!(
                "unknown auth method {s:?}; use \"api_key\", \"jwt:PROVIDER\", \"forward:NAME\" \
                 or \"introspection:NAME\""
            )),
        }
    }
}

impl fmt::Display for AuthRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthRef::ApiKey => write!(f, "api_key"),
            AuthRef::Jwt(p) => write!(f, "jwt:{p}"),
            AuthRef::Forward(p) => write!(f, "forward:{p}"),
            AuthRef::Introspection(p) => write!(f, "introspection:{p}"),
        }
    }
}

/// What a rate-limit window is counted per: `ip`, `route`, and at most one of `consumer`,
/// `subject`, `api_key`, `header:NAME`, `claim:NAME`, joined with `+`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RateKey {
    /// Per client address.
    pub ip: bool,
    /// Per route.
    pub route: bool,
    /// Per caller, by what identifies it.
    pub who: Option<Who>,
}

/// What identifies a caller for a window (`RateKey::who`). A caller without it (an
/// anonymous request on a `consumer` window, a request without the header) is counted by
/// its client address instead, so such callers cannot share one unlimited bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    /// `consumer`: the API-key consumer, or the JWT subject.
    Consumer,
    /// `subject`: the JWT (or auth service's) subject only.
    Subject,
    /// `api_key`: the API-key consumer only.
    ApiKey,
    /// `header:NAME`: the value of a request header.
    Header(http::HeaderName),
    /// `claim:NAME`: a JWT claim that a provider maps to a header (`claim_headers`).
    Claim(String),
}

impl Who {
    /// As written in a key.
    pub fn text(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Who::Consumer => "consumer".into(),
            Who::Subject => "subject".into(),
            Who::ApiKey => "api_key".into(),
            Who::Header(h) => format!("header:{h}").into(),
            Who::Claim(c) => format!("claim:{c}").into(),
        }
    }
}

impl TryFrom<String> for RateKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut k = RateKey::default();
        for part in s.split('+').map(str::trim) {
            let who = match part.split_once(':') {
                None if part == "ip" => {
                    k.ip = true;
                    continue;
                }
                None if part == "route" => {
                    k.route = true;
                    continue;
                }
                None if part == "consumer" => Who::Consumer,
                None if part == "subject" => Who::Subject,
                None if part == "api_key" => Who::ApiKey,
                Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(Who::Header)
                    .map_err(|_| format!("invalid header name {name:?} in key part {part:?}"))?,
                Some(("claim", name)) if !name.trim().is_empty() => {
                    Who::Claim(name.trim().to_string())
                }
                _ => return Err(invalid_key_part(part)),
            };
            if let Some(before) = &k.who {
                return Err(format!(
                    "a key counts one kind of caller: {:?} and {part:?}",
                    before.text()
                ));
            }
            k.who = Some(who);
        }
        Ok(k)
    }
}

/// Why `part` is no part of a rate-limit key.
fn invalid_key_part(part: &str) -> String {
    format!(
        "invalid key part {part:?}; join \"ip\", \"route\" and one of \"consumer\", \"subject\", \
         \"api_key\", \"header:NAME\", \"claim:NAME\" with '+'"
    )
}

impl RateKey {
    /// Counted per client IP (the default).
    pub const IP: RateKey = RateKey {
        ip: true,
        route: false,
        who: None,
    };

    /// As written in the file, in a fixed order (`ip+route+consumer`).
    pub fn text(&self) -> String {
        let mut parts: Vec<std::borrow::Cow<'static, str>> = Vec::new();
        if self.ip {
            parts.push("ip".into());
        }
        if self.route {
            parts.push("route".into());
        }
        if let Some(w) = &self.who {
            parts.push(w.text());
        }
        parts.join("+")
    }
}

/// What a consistent-hash group hashes on: `"header:NAME"`, `"cookie:NAME"`, `"client_ip"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum HashOn {
    /// `header:NAME`: the value of a request header.
    Header(http::HeaderName),
    /// `cookie:NAME`: the value of a cookie.
    Cookie(String),
    /// `client_ip`: the client's address.
    ClientIp,
}

impl TryFrom<String> for HashOn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        match s.split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("invalid header name {name:?}")),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Ok(HashOn::Cookie(name.trim().to_string()))
            }
            _ => Err(format!(
                "invalid hash_on {s:?}; write \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
            )),
        }
    }
}

/// The lowest TLS version a listener accepts: `"1.2"` (1.2 and 1.3) or `"1.3"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    V1_2,
    /// TLS 1.3.
    V1_3,
}

impl TryFrom<String> for TlsVersion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(format!(
                "invalid TLS version {s:?}; write \"1.2\" or \"1.3\""
            )),
        }
    }
}

/// The shape of diagnostic-log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where access-log lines go: `"stdout"`, `"off"`, or a file path (appended to).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogTarget {
    /// Standard output.
    Stdout,
    /// Nowhere.
    Off,
    /// A file, reopened on `SIGUSR1`.
    File(PathBuf),
}

impl TryFrom<String> for LogTarget {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "stdout" => Ok(LogTarget::Stdout),
            "off" => Ok(LogTarget::Off),
            "" => Err("must be \"stdout\", \"off\" or a file path".into()),
            path => Ok(LogTarget::File(path.into())),
        }
    }
}

/// How a caching route treats requests with credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    /// Neither served from nor stored in the cache.
    #[default]
    Bypass,
    /// One entry for every caller.
    Shared,
    /// Entries keyed by the authenticated consumer.
    PerConsumer,
}

/// A JWT signature algorithm, as in the token header: `HS256`, `RS256`, `EdDSA`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct JwtAlgorithm(pub jsonwebtoken::Algorithm);

impl TryFrom<String> for JwtAlgorithm {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<jsonwebtoken::Algorithm>()
            .map(JwtAlgorithm)
            .map_err(|_| {
                format!(
                    "unknown algorithm {s:?}; use HS256/384/512, RS256/384/512, \
                     PS256/384/512, ES256/384 or EdDSA"
                )
            })
    }
}

/// A host pattern: an exact name (or IP) or a `*.suffix` wildcard, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum HostPattern {
    /// Lower-case host name.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any name ending in it.
    Suffix(String),
}

impl TryFrom<String> for HostPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if let Some(suffix) = lower.strip_prefix("*.") {
            if valid_name(suffix) {
                return Ok(HostPattern::Suffix(format!(".{suffix}")));
            }
        } else if valid_name(&lower) || lower.parse::<std::net::IpAddr>().is_ok() {
            return Ok(HostPattern::Exact(lower));
        }
        Err(format!(
            "invalid host {s:?}; write a name like \"api.example.com\" or a wildcard like \"*.example.com\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each typed scalar refuses a bad value at parse time, with the key path.
    #[test]
    fn bad_values_are_refused_with_their_key_path() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            auth: Vec<AuthRef>,
            key: RateKey,
            hash_on: HashOn,
            min_version: TlsVersion,
            target: LogTarget,
            authenticated: CacheSharing,
            algorithms: Vec<JwtAlgorithm>,
            hosts: Vec<HostPattern>,
        }
        let good = r#"
auth = ["api_key", "jwt:main"]
key = "ip+consumer"
hash_on = "header:X-User"
min_version = "1.3"
target = "/var/log/tollgate/access.log"
authenticated = "per_consumer"
algorithms = ["RS256", "EdDSA"]
hosts = ["API.example.com", "*.example.org"]
"#;
        let doc: Doc = toml::from_str(good).unwrap();
        assert_eq!(doc.auth[1], AuthRef::Jwt("main".into()));
        assert!(doc.key.ip && doc.key.who == Some(Who::Consumer) && !doc.key.route);
        assert_eq!(doc.hosts[0], HostPattern::Exact("api.example.com".into()));
        let cases = [
            (
                "auth = [\"api_key\", \"oauth\"]",
                "auth[1]",
                "unknown auth method",
            ),
            ("key = \"ip+user\"", "key", "invalid key part \"user\""),
            ("hash_on = \"body\"", "hash_on", "invalid hash_on"),
            (
                "min_version = \"1.1\"",
                "min_version",
                "invalid TLS version",
            ),
            ("target = \"\"", "target", "must be \"stdout\""),
            (
                "authenticated = \"everyone\"",
                "authenticated",
                "unknown variant",
            ),
            (
                "algorithms = [\"RS256\", \"none\"]",
                "algorithms[1]",
                "unknown algorithm",
            ),
            ("hosts = [\"a b\"]", "hosts[0]", "invalid host"),
        ];
        for (line, path, fragment) in cases {
            let key = line.split(' ').next().unwrap();
            let text: String = good
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{key} ")) {
                        line
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let err = serde_path_to_error::deserialize::<_, Doc>(
                toml::Deserializer::parse(&text).unwrap(),
            )
            .unwrap_err();
            assert_eq!(err.path().to_string(), path, "{line}");
            assert!(err.inner().to_string().contains(fragment), "{line}: {err}");
        }
    }
}

/// Text the file gives a meaning to (a header name, a header value, a method), parsed when
/// the file is read. An invalid one is kept with its error and reported with every other
/// problem when the file is built: parsing stops at the first error, building reports them
/// all, each at its key with line and column.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    text: String,
    value: Result<T, String>,
}

/// How a [`Parsed`] value reads its text.
pub trait FromText: Sized {
    /// What the schema says the text must look like.
    const LOOKS_LIKE: &'static str;
    /// The value `text` means, or why it means none.
    fn from_text(text: &str) -> Result<Self, String>;
}

impl<T> Parsed<T> {
    /// The value, or `None` with the problem noted at `at`.
    pub fn get(&self, at: &str, problems: &mut Vec<Problem>) -> Option<&T> {
        match &self.value {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(Problem::new(at, e.clone()));
                None
            }
        }
    }

    /// The value, or why the text is not one.
    pub fn value(&self) -> Result<&T, &str> {
        self.value.as_ref().map_err(String::as_str)
    }

    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T: FromText> Parsed<T> {
    /// `text`, parsed.
    pub fn new(text: &str) -> Self {
        Parsed {
            text: text.to_string(),
            value: T::from_text(text),
        }
    }
}

impl<'de, T: FromText> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Parsed::new(&text))
    }
}

impl<T> PartialEq for Parsed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for Parsed<T> {}

impl<T> std::hash::Hash for Parsed<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h)
    }
}

impl<T> Ord for Parsed<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl<T> PartialOrd for Parsed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> fmt::Display for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T: FromText> schemars::JsonSchema for Parsed<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::LOOKS_LIKE.replace(' ', "_").into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "description": T::LOOKS_LIKE })
    }
}

impl FromText for http::HeaderName {
    const LOOKS_LIKE: &'static str = "a header name";
    fn from_text(s: &str) -> Result<Self, String> {
        http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("invalid header name {s:?}"))
    }
}

impl FromText for http::HeaderValue {
    const LOOKS_LIKE: &'static str = "a header value";
    fn from_text(s: &str) -> Result<Self, String> {
        http::HeaderValue::from_str(s).map_err(|_| "invalid header value".to_string())
    }
}

impl FromText for http::Method {
    const LOOKS_LIKE: &'static str = "an HTTP method in upper case";
    fn from_text(m: &str) -> Result<Self, String> {
        let valid = !m.is_empty() && m.to_ascii_uppercase() == m;
        match http::Method::from_bytes(m.as_bytes()) {
            Ok(method) if valid => Ok(method),
            _ => Err(format!(
                "invalid method {m:?}; write it upper-case, e.g. \"GET\""
            )),
        }
    }
}

/// A header name as written (any case).
pub type Header = Parsed<http::HeaderName>;
/// A header value as written.
pub type HeaderText = Parsed<http::HeaderValue>;
/// An HTTP method, upper-case as HTTP spells it.
pub type MethodName = Parsed<http::Method>;

/// Name/value pairs of a header table, each problem at `at.NAME`.
pub fn header_pairs(
    at: &str,
    map: &std::collections::BTreeMap<Header, HeaderText>,
    problems: &mut Vec<Problem>,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    map.iter()
        .filter_map(|(k, v)| {
            let at = format!("{at}.{k}");
            let name = k.get(&at, problems)?;
            let value = v.get(&at, problems)?;
            Some((name.clone(), value.clone()))
        })
        .collect()
}

/// A JSON Schema for a value written as text: its name and what the text must look like.
macro_rules! text_schema {
    ($t:ty, $description:expr) => {
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "description": $description })
            }
        }
    };
}

text_schema!(AuthRef, "\"api_key\" or \"jwt:PROVIDER\"");
text_schema!(
    RateKey,
    "\"ip\", \"route\" and one of \"consumer\", \"subject\", \"api_key\", \"header:NAME\", \"claim:NAME\", joined with '+'"
);
text_schema!(HashOn, "\"header:NAME\", \"cookie:NAME\" or \"client_ip\"");
text_schema!(TlsVersion, "\"1.2\" or \"1.3\"");
text_schema!(LogTarget, "\"stdout\", \"off\" or a file path");
text_schema!(
    JwtAlgorithm,
    "HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
);
text_schema!(
    HostPattern,
    "a host name or a wildcard like \"*.example.com\""
);
text_schema!(HumanDuration, "a duration like \"500ms\", \"5s\", \"2m\"");

impl schemars::JsonSchema for HumanSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a size like \"64KiB\", \"10MB\", or a number of bytes",
            "type": ["string", "integer"]
        })
    }
}
