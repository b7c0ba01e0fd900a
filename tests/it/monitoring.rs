//! The shipped monitoring works on real data: a real Prometheus server (Debian's
//! `prometheus`, installed by `scripts/setup.sh`) scrapes a real gateway under a little
//! traffic of every kind the dashboard shows, loads `deploy/prometheus/tollgate-rules.yml`,
//! and then every PromQL expression of `deploy/grafana/tollgate.json`, every recording rule
//! and the value side of every alert returns data, and every rule evaluates without error.
//! (`promtool check rules` and `promtool test rules` run in `scripts/validate-deploy.sh`.)
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Prometheus server on a free loopback port, killed (by pid) when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus (scripts/setup.sh installs Debian's package)");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = wait_for(Duration::from_secs(30), || {
            let r = client().get(format!("{}/-/ready", p.url)).send().ok()?;
            r.status().is_success().then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus did not become ready: {}",
            p.log()
        );
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector (or scalar as one element); panics on a PromQL error.
    fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let r: serde_json::Value = client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["status"], "success", "{q}: {r}");
        match &r["data"]["result"] {
            serde_json::Value::Array(v) => v.clone(),
            other => vec![other.clone()],
        }
    }
}

/// Every `expr` of the dashboard's panels (rows' nested panels included), with Grafana's
/// variables as a test run has them.
fn dashboard_exprs(path: &Path) -> Vec<(String, String)> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&doc["panels"], &mut out);
    out.into_iter()
        .map(|(title, e)| {
            let mut e = e;
            for (var, value) in [
                ("__rate_interval", "1m"),
                ("__interval", "1m"),
                ("__range", "5m"),
                ("job", ".*"),
                ("route", ".*"),
                ("upstream", ".*"),
            ] {
                e = e
                    .replace(&format!("${{{var}}}"), value)
                    .replace(&format!("${var}"), value);
            }
            (title, e)
        })
        .collect()
}

/// The part of `expr` before its last top-level comparison (`X > 0.05` gives `X`).
fn value_side(expr: &str) -> &str {
    let b = expr.as_bytes();
    let (mut depth, mut quote, mut cut) = (0i32, None::<u8>, None);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'>' | b'<' | b'=' | b'!' if depth == 0 => {
                    let two = b.get(i + 1) == Some(&b'=');
                    let is_cmp = match c {
                        b'=' | b'!' => two,
                        _ => true,
                    };
                    if is_cmp {
                        cut = Some(i);
                        if two {
                            i += 1;
                        }
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    cut.map_or(expr, |i| expr[..i].trim())
}

#[test]
fn value_side_cuts_at_the_last_top_level_comparison() {
    assert_eq!(
        value_side("up{job=\"tollgate\"} == 0"),
        "up{job=\"tollgate\"}"
    );
    assert_eq!(
        value_side("(a or b * 0) / c * (d >= bool 0.1) > 0.05"),
        "(a or b * 0) / c * (d >= bool 0.1)"
    );
    assert_eq!(value_side("x{a!=\"b\"} != 1"), "x{a!=\"b\"}");
    assert_eq!(value_side("rate(x[5m])"), "rate(x[5m])");
}

#[test]
fn every_dashboard_and_rule_expression_returns_data_from_a_live_gateway() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app = Backend::echo("app");
    let flaky = Backend::start("flaky", |r| {
        Reply::status(if r.path.ends_with("/fail") { 503 } else { 200 })
    });
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = self_signed(dir.path(), "monitoring");
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:{tls_port}"
[listeners.tls]
certificates = [{{ cert = "{crt}", key = "{key}" }}]

[cache]
max_size = "1MiB"

[consumers.alice]
keys = ["alice-key-0123456789"]

[upstreams.app]
targets = [{{ address = "{app}" }}, {{ address = "127.0.0.1:{dead}" }}]
[upstreams.app.health_check]
kind = "tcp"
interval = "200ms"

[upstreams.flaky]
targets = [{{ address = "{flaky}" }}]
[upstreams.flaky.circuit_breaker]
consecutive_failures = 1000
cooldown = "1s"

[[routes]]
name = "keyed"
path_prefix = "/keyed"
upstream = "app"
auth = ["api_key"]

[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "app"
rate_limits = [{{ limit = 2, window = "60s" }}]

[[routes]]
name = "cached"
path_prefix = "/cached"
upstream = "app"
[routes.cache]
ttl = "60s"

[[routes]]
name = "flaky"
path_prefix = "/flaky"
upstream = "flaky"
retry_on = []

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        crt = crt.display(),
        key = key.display(),
        app = app.addr,
        flaky = flaky.addr,
        dead = free_port(),
    ));
    // One refused reload and one good one.
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, "[[routes]]\nname = 1\n").unwrap();
    assert_eq!(gw.reload().0, 400);
    std::fs::write(&gw.config_path, &good).unwrap();
    assert_eq!(gw.reload().0, 200);

    let prom = Prometheus::start(gw.admin, &root.join("deploy/prometheus/tollgate-rules.yml"));
    let c = client();
    let traffic = || {
        for path in [
            "/a",
            "/b",
            "/flaky/ok",
            "/flaky/fail",
            "/cached/x",
            "/limited/1",
        ] {
            c.get(gw.url(path)).body("x").send().unwrap();
        }
        c.get(gw.url("/keyed/x")).send().unwrap();
        c.get(gw.url("/keyed/x"))
            .header("x-api-key", "alice-key-0123456789")
            .send()
            .unwrap();
    };
    // Enough scrapes for every rate over a minute, and a rule evaluation after them.
    let scraped = wait_for(Duration::from_secs(60), || {
        traffic();
        let n = prom
            .query("count_over_time(tollgate_requests_total{route=\"app\",status=\"200\"}[1m])");
        let samples = n
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        (samples >= 6.0).then_some(())
    });
    assert!(scraped.is_some(), "too few scrapes: {}", prom.log());
    // Rules are evaluated every second: wait for one evaluation of every rule after that.
    let rules = wait_for(Duration::from_secs(20), || {
        let r: serde_json::Value = client()
            .get(format!("{}/api/v1/rules", prom.url))
            .send()
            .ok()?
            .json()
            .ok()?;
        let rules: Vec<serde_json::Value> = r["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok");
        evaluated.then_some(rules)
    })
    .unwrap_or_else(|| panic!("rules not all evaluated healthy: {}", prom.log()));

    let mut empty = Vec::new();
    let exprs = dashboard_exprs(&root.join("deploy/grafana/tollgate.json"));
    assert!(exprs.len() >= 40, "{} expressions", exprs.len());
    for (title, e) in &exprs {
        if prom.query(e).is_empty() {
            empty.push(format!("dashboard {title:?}: {e}"));
        }
    }
    let mut alerts = 0;
    for rule in &rules {
        let q = rule["query"].as_str().unwrap();
        let (what, expr) = match rule["type"].as_str() {
            Some("alerting") => {
                alerts += 1;
                (
                    rule["name"].as_str().unwrap().to_string(),
                    value_side(q).to_string(),
                )
            }
            _ => {
                let name = rule["name"].as_str().unwrap().to_string();
                (name.clone(), name)
            }
        };
        if prom.query(&expr).is_empty() {
            empty.push(format!("rule {what}: {expr}"));
        }
    }
    assert!(alerts >= 9, "{alerts} alerts");
    assert!(
        empty.is_empty(),
        "expressions without data:\n{}",
        empty.join("\n")
    );

    // The failed reload and the dead target are visible, as an operator would expect.
    let failed = prom.query("tollgate_config_reloads_total{result=\"error\"}");
    assert_eq!(failed[0]["value"][1], "1");
    let unhealthy = prom.query("tollgate_upstream_target_healthy{upstream=\"app\"} == 0");
    assert_eq!(unhealthy.len(), 1, "{unhealthy:?}");
}
