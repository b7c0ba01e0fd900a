//! DNS targets: a `NAME:PORT` target resolved through the configured hosts file; changing the
//! answer changes the target set without a restart.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::Duration;

#[test]
fn re_resolution_changes_targets_without_restart() {
    // The name first points at a (127.0.0.1), then at b: the same port on 127.0.0.2.
    let a = Backend::echo("a");
    let b = Backend::echo_on("b", "127.0.0.2", a.addr.port());
    let hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(hosts.path(), "127.0.0.1 app.internal\n").unwrap();
    let gw = Gateway::start(&format!(
        r#"
[resolver]
hosts_file = "{hosts}"

[upstreams.app]
targets = [{{ address = "app.internal:{port}" }}]
dns_refresh = "1s"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        hosts = hosts.path().display(),
        port = a.addr.port()
    ));
    let c = client();
    let who = || {
        c.get(gw.url("/x")).send().unwrap().headers()["x-backend"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(who(), "a");
    std::fs::write(hosts.path(), "127.0.0.2 app.internal\n").unwrap();
    let moved = wait_for(Duration::from_secs(10), || (who() == "b").then_some(()));
    assert!(
        moved.is_some(),
        "the new answer took effect without a restart"
    );
    assert!(b.hits() >= 1);
    let health: serde_json::Value = c
        .get(gw.admin_url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let targets = health["upstreams"]["app"]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(
        targets[0]["address"],
        format!("127.0.0.2:{}", a.addr.port())
    );
}
