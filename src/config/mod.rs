//! Configuration: what the user writes, and nothing else of the crate. [`file`](mod@file) is the serde
//! model of `tollgate.toml`, [`types`] the strings that mean something (parsed as the file is
//! read), [`bounds`] the allowed range of every number, and [`Problem`] what is wrong and
//! where. [`load`] reads and parses a file, reporting a type error with its key path; what
//! the values mean is checked where the runtime is built (`crate::assemble`), in one pass.

pub mod bounds;
pub mod file;
pub(crate) mod fingerprint;
mod problem;
pub mod types;

use std::path::{Path, PathBuf};

pub use file::ConfigFile;
pub(crate) use problem::closest;
pub use problem::{ConfigError, FromConfig, Problem};

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

/// A configuration file as read: its text (to locate problems found after parsing) and the
/// SHA-256 of it (hex), which names the generation built from it.
pub struct Source {
    /// The file's text.
    pub text: String,
    /// SHA-256 of the text, hex.
    pub sha256: String,
}

impl Source {
    /// Add the line and column of each problem's key (`routes[2].upstream`) to its message,
    /// as for the problems found while parsing: the key itself, or the nearest enclosing
    /// one the file writes (a default value has no line of its own).
    pub fn locate(&self, problems: &mut [Problem]) {
        let Ok(doc) = toml::de::DeTable::parse(&self.text) else {
            return;
        };
        for p in problems.iter_mut() {
            if p.path.is_empty() || p.message.contains("(line ") {
                continue;
            }
            // `routes[2]` is also named, as an operator calls it.
            let route = p
                .path
                .strip_prefix("routes[")
                .and_then(|r| r.split_once(']'))
                .and_then(
                    |(i, _)| match value_at(doc.get_ref(), &format!("routes[{i}].name")) {
                        Some((v, true)) => match v.get_ref() {
                            toml::de::DeValue::String(n) => Some(format!("route {n:?}, ")),
                            _ => None,
                        },
                        _ => None,
                    },
                )
                .unwrap_or_default();
            if let Some((v, _)) = value_at(doc.get_ref(), &p.path) {
                let (line, column) = line_column(&self.text, v.span().start);
                p.message
                    .push_str(&format!(" ({route}line {line}, column {column})"));
            }
        }
    }
}

/// The value at `path` (`routes[2].cors.allow_origins[0]`, `auth.jwt."my key"`), or the
/// deepest part of it the file has; `true` when the whole path was found.
fn value_at<'d, 'i>(
    root: &'d toml::de::DeTable<'i>,
    path: &str,
) -> Option<(&'d toml::Spanned<toml::de::DeValue<'i>>, bool)> {
    use toml::de::DeValue;
    let mut found: Option<&toml::Spanned<DeValue<'i>>> = None;
    for segment in key_segments(path) {
        let in_table = |t: &'d toml::de::DeTable<'i>, name: &str| {
            t.iter()
                .find(|(k, _)| k.get_ref().as_ref() == name)
                .map(|(_, v)| v)
        };
        let next = match (segment, found.map(|v| v.get_ref())) {
            (Segment::Key(name), None) => in_table(root, name),
            (Segment::Key(name), Some(DeValue::Table(t))) => in_table(t, name),
            (Segment::Index(i), Some(DeValue::Array(a))) => a.get(i),
            _ => None,
        };
        match next {
            Some(v) => found = Some(v),
            None => return found.map(|v| (v, false)),
        }
    }
    found.map(|v| (v, true))
}

enum Segment<'p> {
    Key(&'p str),
    Index(usize),
}

/// `routes[2].upstream` as `routes`, `2`, `upstream`; a quoted key is one segment.
fn key_segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            out.push(Segment::Key(&r[..end]));
            rest = r.get(end + 1..).unwrap_or("");
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            match r[..end].parse() {
                Ok(i) => out.push(Segment::Index(i)),
                Err(_) => break,
            }
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            out.push(Segment::Key(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out
}

/// Read and parse a configuration file, with its [`Source`].
pub fn load(path: &Path) -> Result<(ConfigFile, Source), ConfigError> {
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
    let sha256 = hex::encode(digest);
    Ok((file, Source { text, sha256 }))
}

/// A table written as an array (`server = []`, `[[routes.cache]]`), which serde accepts as
/// a struct with every field defaulted: found by walking the file beside the JSON Schema.
fn array_for_table(text: &str) -> Option<Problem> {
    // The schema is the same for every file: built once per process.
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(|| schemars::schema_for!(ConfigFile).to_value());
    let doc = toml::de::DeTable::parse(text).ok()?;
    let defs = schema.get("$defs")?;
    let (path, at) = walk_table(doc.get_ref(), schema, defs, String::new())?;
    let (line, column) = line_column(text, at.unwrap_or(0));
    let key = path.rsplit('.').next().unwrap_or(&path).to_string();
    Some(Problem::new(
        path,
        format!("expected a table ([{key}]), got an array (line {line}, column {column})"),
    ))
}

/// The schema an `anyOf` (an `Option`) or a `$ref` stands for.
fn resolve<'s>(
    schema: &'s serde_json::Value,
    defs: &'s serde_json::Value,
) -> &'s serde_json::Value {
    if let Some(r) = schema.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap_or("");
        return defs.get(name).map_or(schema, |d| resolve(d, defs));
    }
    if let Some(any) = schema.get("anyOf").and_then(|a| a.as_array()) {
        if let Some(s) = any
            .iter()
            .find(|s| s.get("type").and_then(|t| t.as_str()) != Some("null"))
        {
            return resolve(s, defs);
        }
    }
    schema
}

fn walk_shape(
    value: &toml::de::DeValue<'_>,
    schema: &serde_json::Value,
    defs: &serde_json::Value,
    path: String,
) -> Option<(String, Option<usize>)> {
    use toml::de::DeValue;
    let schema = resolve(schema, defs);
    let is = |t: &str| schema.get("type").and_then(|v| v.as_str()) == Some(t);
    match value {
        DeValue::Array(items) if is("object") => {
            Some((path, items.first().map(|i| i.span().start)))
        }
        DeValue::Array(items) => {
            let item = schema.get("items")?;
            items.iter().enumerate().find_map(|(i, v)| {
                walk_shape(v.get_ref(), item, defs, format!("{path}[{i}]"))
                    .map(|(p, at)| (p, at.or(Some(v.span().start))))
            })
        }
        DeValue::Table(t) => walk_table(t, schema, defs, path),
        _ => None,
    }
}

/// [`walk_shape`] over the keys of a table whose schema is `schema` (already resolved).
fn walk_table(
    t: &toml::de::DeTable<'_>,
    schema: &serde_json::Value,
    defs: &serde_json::Value,
    path: String,
) -> Option<(String, Option<usize>)> {
    t.iter().find_map(|(k, v)| {
        let key = k.get_ref().as_ref();
        let sub = schema
            .get("properties")
            .and_then(|p| p.get(key))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))?;
        let child = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        walk_shape(v.get_ref(), sub, defs, child).map(|(p, at)| (p, at.or(Some(v.span().start))))
    })
}

/// Parse TOML text into the file model, locating type errors by key path.
pub fn parse(text: &str) -> Result<ConfigFile, Problem> {
    if let Some(p) = array_for_table(text) {
        return Err(p);
    }
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
