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
    let field = regex::Regex::new(r"\n    pub(?:\(crate\))? (\w+):").unwrap();
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

/// Every vendored Pingora file carrying a `TOLLGATE:` change is listed under its crate in
/// `patches/README.md`, so an upgrade knows what to carry.
#[test]
fn every_vendored_change_is_listed_in_patches() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let note = read("patches/README.md");
    let mut unlisted = Vec::new();
    let mut marked = 0;
    for krate in std::fs::read_dir(root.join("vendor")).unwrap() {
        let krate = krate.unwrap().path();
        if !krate.is_dir() {
            continue;
        }
        let name = krate.file_name().unwrap().to_string_lossy().to_string();
        let section = note
            .split("\n## ")
            .find(|s| s.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("patches/README.md has no section for {name}"));
        let mut stack = vec![krate.join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if !text.contains("TOLLGATE:") {
                    continue;
                }
                marked += 1;
                let file = path.file_name().unwrap().to_string_lossy().to_string();
                let relative = path
                    .strip_prefix(&krate)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                if !section.contains(&relative) && !section.contains(&format!("`{file}`")) {
                    unlisted.push(format!("vendor/{name}/{relative}"));
                }
            }
        }
    }
    assert!(marked >= 10, "found only {marked} marked files");
    assert!(
        unlisted.is_empty(),
        "not in patches/README.md: {unlisted:?}"
    );
}

/// Every module the README's request-flow table names exists under `src/`: the table drifted
/// once (it named `gateway.rs` after that file had become `gateway/`).
#[test]
fn the_readme_flow_table_names_existing_modules() {
    let readme = read("README.md");
    let table = readme
        .split("## How a request flows")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").find(|block| block.starts_with("| hook")))
        .expect("the flow table");
    let mut named = 0;
    for row in table.lines().skip(2) {
        let module_column = row.trim_end_matches('|').rsplit('|').next().unwrap_or("");
        for name in module_column.split('`').skip(1).step_by(2) {
            named += 1;
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src")
                .join(name);
            assert!(
                path.exists(),
                "README flow table names src/{name}, which does not exist"
            );
        }
    }
    assert!(named > 10, "{named} modules named");
}

/// Every `src/...` path `docs/design.md` names exists, so the map of the house cannot drift
/// from the house.
#[test]
fn the_design_doc_names_existing_files() {
    let doc = read("docs/design.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paths: Vec<&str> = regex::Regex::new(r"\bsrc/[A-Za-z0-9_/]+(?:\.rs|/)")
        .unwrap()
        .find_iter(&doc)
        .map(|m| m.as_str())
        .collect();
    assert!(paths.len() > 20, "only {} paths found", paths.len());
    let missing: Vec<&&str> = paths.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "docs/design.md names missing files: {missing:?}"
    );
}

/// Every note about Pingora in `src/` has the one greppable form an upgrade looks for:
/// `NOTE(pingora-0.9): <the Pingora file, issue or patch it is about>`.
#[test]
fn every_pingora_note_names_its_source() {
    let mut notes = 0;
    let mut bad = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                let Some(at) = line.find("NOTE") else {
                    continue;
                };
                let note = &line[at..];
                let sourced = note
                    .strip_prefix("NOTE(pingora-0.9): ")
                    .is_some_and(|rest| {
                        ["pingora-", "issues/", "patches/", "box_in_place"]
                            .iter()
                            .any(|s| rest.contains(s))
                    });
                if sourced {
                    notes += 1;
                } else {
                    bad.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(notes >= 20, "only {notes} tagged notes");
    assert!(bad.is_empty(), "untagged or unsourced notes: {bad:#?}");
}
