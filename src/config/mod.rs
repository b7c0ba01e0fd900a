//! Configuration: what the user writes, and nothing else of the crate. [`file`](mod@file) is the serde
//! model of `tollgate.toml`, [`types`] the strings that mean something (parsed as the file is
//! read), [`bounds`] the allowed range of every number, and [`Problem`] what is wrong and
//! where. [`load`] reads and parses a file, reporting a type error with its key path; what
//! the values mean is checked where the runtime is built (`crate::assemble`), in one pass.

pub mod bounds;
pub mod file;
pub(crate) mod fingerprint;
pub mod types;

use std::fmt;
use std::path::{Path, PathBuf};

pub use file::ConfigFile;

/// One thing wrong with a configuration, located by its key path (`routes[2].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }

    /// `given` is not one of `valid`: the message names the closest one.
    pub fn unknown(path: impl Into<String>, what: &str, given: &str, valid: &[&str]) -> Self {
        let hint = closest(given, valid.iter().copied())
            .map(|v| format!("; did you mean `{v}`?"))
            .unwrap_or_default();
        Problem::new(path, format!("unknown {what} `{given}`{hint}"))
    }
}

/// The valid choice most like `given`, when one is close enough to be a typo.
pub(crate) fn closest<'v>(given: &str, valid: impl Iterator<Item = &'v str>) -> Option<&'v str> {
    valid
        .map(|v| (strsim::jaro_winkler(given, v), v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// Why a configuration file was refused. Displays one line per problem.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.path.is_empty() {
                write!(f, "{file}: {}", p.message)?;
            } else {
                write!(f, "{file}: {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The JSON Schema of the configuration file (`tollgate schema`), for editors and CI.
pub fn schema() -> String {
    let mut schema = schemars::schema_for!(ConfigFile).to_value();
    // The thread default is this machine's CPU count: say so instead of printing it.
    if let Some(threads) = schema.pointer_mut("/$defs/ServerSection/properties/threads") {
        if let Some(t) = threads.as_object_mut() {
            t.remove("default");
            t.insert(
                "description".into(),
                "Worker threads; default: one per CPU (at most 1024).".into(),
            );
        }
    }
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Read and parse a configuration file; also returns the SHA-256 of its text (hex), which
/// names the generation built from it.
pub fn load(path: &Path) -> Result<(ConfigFile, String), ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(vec![Problem::new("", format!("cannot read file: {e}"))]))?;
    let mut file = parse(&text).map_err(|p| fail(vec![p]))?;
    // Relative paths in the file are relative to the file, not to the working directory.
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    file.resolve_paths(&base);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
    Ok((file, hex::encode(digest)))
}

/// Parse TOML text into the file model, locating type errors by key path.
pub fn parse(text: &str) -> Result<ConfigFile, Problem> {
    let de =
        toml::Deserializer::parse(text).map_err(|e| Problem::new("", syntax_message(text, &e)))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let path = if path == "." { String::new() } else { path };
        let mut message = in_operator_words(&path, inner.message());
        if let Some(span) = inner.span() {
            let (line, column) = line_column(text, span.start);
            message.push_str(&format!(" (line {line}, column {column})"));
        }
        Problem::new(path, message)
    })
}

/// serde's messages, said the way an operator thinks of the file: "unknown key" with the
/// closest valid one, "a whole number" rather than `usize`, and `[[routes]]` where a table
/// was written for a list of tables.
fn in_operator_words(path: &str, message: &str) -> String {
    let choices = |rest: &str| -> Vec<String> {
        rest.split(", ")
            .filter_map(|c| {
                c.trim()
                    .strip_prefix('`')?
                    .strip_suffix('`')
                    .map(String::from)
            })
            .collect()
    };
    let suggest = |given: &str, valid: &[String]| {
        closest(given, valid.iter().map(String::as_str))
            .map(|v| format!("; did you mean `{v}`?"))
            .unwrap_or_default()
    };
    for (prefix, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((given, rest)) = rest.split_once('`') else {
            continue;
        };
        let valid = rest
            .strip_prefix(", expected one of ")
            .or_else(|| rest.strip_prefix(", expected "))
            .map(choices)
            .unwrap_or_default();
        return format!(
            "unknown {what} `{given}`{}{}",
            suggest(given, &valid),
            if valid.is_empty() {
                String::new()
            } else {
                format!(" (valid: {})", valid.join(", "))
            }
        );
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            let expected = match expected {
                "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" => "a whole number",
                "f64" | "f32" => "a number",
                "a boolean" => "true or false",
                "a sequence" if got == "map" => {
                    let key = path.rsplit('.').next().unwrap_or(path);
                    return format!(
                        "expected a list; write [[{key}]] once per entry (an array of tables), not [{key}]"
                    );
                }
                "a sequence" => "a list, like [\"a\", \"b\"]",
                e if e.starts_with("struct ") || e == "a map" => "a table",
                e => e,
            };
            return format!("expected {expected}, got {got}");
        }
    }
    message.to_string()
}

/// The 1-based line and column of byte `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!(
                "invalid TOML at line {line}, column {column}: {}",
                e.message()
            )
        }
        None => format!("invalid TOML: {}", e.message()),
    }
}
