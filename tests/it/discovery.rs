//! Targets from a watched file (`targets_file`): replaced by an atomic rename under load with
//! no failed request and traffic moved within a second, a broken file keeping the last good
//! set (and `/health` saying why), and `tollgate -t` refusing files that do not parse.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Write `text` to `path` the way config tools do: a temporary file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn targets_json(backends: &[&Backend]) -> String {
    let list: Vec<_> = backends
        .iter()
        .map(|b| serde_json::json!({"address": b.addr.to_string(), "weight": 1, "metadata": {"zone": "a"}}))
        .collect();
    serde_json::Value::Array(list).to_string()
}

fn gateway(file: &Path) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.app]
targets_file = "{}"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        file.display()
    ))
}

fn served_by(gw: &Gateway) -> Option<String> {
    let r = client().get(gw.url("/x")).send().ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: serde_json::Value = r.json().ok()?;
    v["backend"].as_str().map(str::to_string)
}

#[test]
fn targets_file_replaced_under_load_moves_traffic_within_a_second_and_fails_nothing() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.json");
    std::fs::write(&file, targets_json(&[&a])).unwrap();
    let gw = Arc::new(gateway(&file));
    assert_eq!(served_by(&gw).as_deref(), Some("a"));
    let h = gw.health();
    assert_eq!(h["upstreams"]["app"]["discovery"]["provider"], "file");
    assert_eq!(h["upstreams"]["app"]["discovery"]["targets"], 1);

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (gw, stop, failed, sent) = (gw.clone(), stop.clone(), failed.clone(), sent.clone());
            std::thread::spawn(move || {
                let c = client();
                while !stop.load(Ordering::SeqCst) {
                    sent.fetch_add(1, Ordering::SeqCst);
                    match c.get(gw.url("/load")).send() {
                        Ok(r) if r.status().is_success() => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let changed = Instant::now();
    replace(&file, &targets_json(&[&b]));
    let moved = wait_for(Duration::from_secs(5), || {
        (served_by(&gw).as_deref() == Some("b")).then(|| changed.elapsed())
    })
    .expect("traffic moved to the new target");
    // Once moved, nothing goes to the removed target.
    let hits_a = a.hits();
    for _ in 0..20 {
        assert_eq!(served_by(&gw).as_deref(), Some("b"));
    }
    assert_eq!(a.hits(), hits_a, "the removed target gets no new request");
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "of {}",
        sent.load(Ordering::SeqCst)
    );
    assert!(moved < Duration::from_secs(1), "moved after {moved:?}");
    eprintln!("targets file change to traffic moved: {moved:?}");
}

#[test]
fn a_broken_targets_file_keeps_the_last_good_set_and_says_so() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.toml");
    let toml_of = |b: &Backend| format!("[[targets]]\naddress = \"{}\"\nweight = 2\n", b.addr);
    std::fs::write(&file, toml_of(&a)).unwrap();
    let gw = gateway(&file);
    assert_eq!(served_by(&gw).as_deref(), Some("a"));

    replace(&file, "[[targets]]\naddress = ");
    let error = wait_for(Duration::from_secs(5), || {
        let h = gw.health();
        h["upstreams"]["app"]["discovery"]["error"]
            .as_str()
            .map(str::to_string)
    })
    .expect("the broken file is reported");
    assert!(error.contains("targets.toml"), "{error}");
    for _ in 0..10 {
        assert_eq!(
            served_by(&gw).as_deref(),
            Some("a"),
            "the last good set serves"
        );
    }

    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_upstream_discovery_failing",
            &[("upstream", "app")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_upstream_targets",
            &[("upstream", "app"), ("provider", "file")]
        ),
        Some(1.0)
    );

    // Fixed: applied, and the error clears.
    replace(&file, &toml_of(&b));
    wait_for(Duration::from_secs(5), || {
        (served_by(&gw).as_deref() == Some("b")).then_some(())
    })
    .expect("the fixed file applies");
    let h = gw.health();
    assert!(h["upstreams"]["app"]["discovery"]["error"].is_null(), "{h}");
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_upstream_discovery_failing",
            &[("upstream", "app")]
        ),
        Some(0.0)
    );
    assert!(metric(
        &m,
        "tollgate_upstream_targets_updated_timestamp_seconds",
        &[("upstream", "app")]
    )
    .is_some_and(|t| t > 1.7e9));
    assert!(
        h["upstreams"]["app"]["discovery"]["updated_at"].is_string(),
        "{h}"
    );

    // A file that disappears keeps the set too.
    std::fs::remove_file(&file).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(served_by(&gw).as_deref(), Some("b"));
}

#[test]
fn targets_files_that_do_not_parse_fail_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.json", None, "missing.json"),
        (
            "bad.json",
            Some("[{\"address\": \"10.0.0.1\"}]"),
            "invalid target address",
        ),
        (
            "dup.json",
            Some("[{\"address\": \"10.0.0.1:80\"}, {\"address\": \"10.0.0.1:80\"}]"),
            "duplicate",
        ),
        ("empty.json", Some("[]"), "lists no target"),
        (
            "typo.json",
            Some("[{\"adress\": \"10.0.0.1:80\"}]"),
            "typo.json",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        if let Some(t) = text {
            std::fs::write(&path, t).unwrap();
        }
        let (code, out) = check_config(&format!(
            "{PREAMBLE}\n[upstreams.app]\ntargets_file = \"{}\"\n[[routes]]\nname = \"r\"\nupstream = \"app\"\n",
            path.display()
        ));
        assert_ne!(code, 0, "{name}");
        assert!(out.contains("upstreams.app.targets_file"), "{name}: {out}");
        assert!(out.contains(want), "{name}: {out}");
    }
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[upstreams.app]\ntargets = [{{ address = \"10.0.0.1:80\" }}]\ntargets_file = \"/x.json\"\n[[routes]]\nname = \"r\"\nupstream = \"app\"\n"
    ));
    assert_ne!(code, 0);
    assert!(out.contains("not several"), "{out}");
}

#[test]
fn new_targets_after_check_serve_only_once_a_check_passed() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    b.set_healthy(false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.json");
    std::fs::write(&file, targets_json(&[&a])).unwrap();
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets_file = "{}"
[upstreams.app.health_check]
path = "/healthz"
interval = "200ms"
healthy_threshold = 1
unhealthy_threshold = 1
new_targets = "after_check"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        file.display()
    ));
    wait_for(Duration::from_secs(5), || {
        (served_by(&gw).as_deref() == Some("a")).then_some(())
    })
    .expect("a serves once checked");
    // b appears failing its checks: not one request reaches it, even before its first check.
    replace(&file, &targets_json(&[&a, &b]));
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        assert_eq!(served_by(&gw).as_deref(), Some("a"));
    }
    assert_eq!(b.hits(), 0, "an unchecked target got traffic");
    let h = gw.health();
    let b_entry = h["upstreams"]["app"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == b.addr.to_string())
        .cloned()
        .unwrap();
    assert_eq!(b_entry["healthy"], false, "{h}");
    // Its checks pass: it joins.
    b.set_healthy(true);
    wait_for(Duration::from_secs(5), || {
        (0..6)
            .any(|_| served_by(&gw).as_deref() == Some("b"))
            .then_some(())
    })
    .expect("b joins after a passed check");
}
