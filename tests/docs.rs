//! The reference in `docs/` is checked against the code, so the two cannot drift: every field
//! of every section of the configuration model (`src/config/file.rs`) is documented in
//! `docs/configuration.md`, and every document the README links to exists.
#![allow(clippy::unwrap_used)]

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(struct, field)` for every `pub` field of every struct in the configuration model.
fn config_fields() -> Vec<(String, String)> {
    let src = read("src/config/file.rs");
    let structs = regex::Regex::new(r"(?s)pub struct (\w+) \{(.*?)\n\}").unwrap();
    let field = regex::Regex::new(r"\n    pub (\w+):").unwrap();
    structs
        .captures_iter(&src)
        .flat_map(|s| {
            let name = s[1].to_string();
            field
                .captures_iter(&s[2])
                .map(|f| (name.clone(), f[1].to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_config_field_is_in_docs_configuration() {
    let doc = read("docs/configuration.md");
    // A field is documented when it appears as a word inside a `code span` or as a TOML key
    // in an example.
    let spans: Vec<&str> = regex::Regex::new(r"`([^`\n]+)`")
        .unwrap()
        .captures_iter(&doc)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let toml_keys = regex::Regex::new(r"(?m)(?:^\s*|[{,]\s*)(\w+)\s*=").unwrap();
    let keys: Vec<&str> = toml_keys
        .captures_iter(&doc)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let fields = config_fields();
    assert!(fields.len() > 100, "parsed only {} fields", fields.len());
    let missing: Vec<String> = fields
        .iter()
        .filter(|(_, f)| {
            let word = regex::Regex::new(&format!(r"(^|\W){f}($|\W)")).unwrap();
            !keys.contains(&f.as_str()) && !spans.iter().any(|s| word.is_match(s))
        })
        .map(|(s, f)| format!("{s}.{f}"))
        .collect();
    assert!(
        missing.is_empty(),
        "fields missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn readme_links_resolve() {
    let readme = read("README.md");
    let link = regex::Regex::new(r"\]\((docs/[^)#]+)").unwrap();
    let links: Vec<String> = link
        .captures_iter(&readme)
        .map(|c| c[1].to_string())
        .collect();
    assert!(links.len() >= 4, "{links:?}");
    for l in links {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(&l).exists(),
            "README links to {l}, which does not exist"
        );
    }
}

/// `docs/tollgate.schema.json` is what `tollgate schema` prints for this code.
#[test]
fn schema_file_matches_the_code() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let kept = read("docs/tollgate.schema.json");
    assert!(
        printed == kept,
        "docs/tollgate.schema.json is stale: run `cargo run -- schema > docs/tollgate.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&kept).unwrap();
    for section in [
        "server",
        "listeners",
        "routes",
        "upstreams",
        "limits",
        "auth",
        "cache",
    ] {
        assert!(schema["properties"][section].is_object(), "{section}");
    }
    // Unknown keys are refused, as the gateway refuses them.
    assert_eq!(schema["additionalProperties"], false);
}
