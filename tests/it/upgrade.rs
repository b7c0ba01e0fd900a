//! Zero-downtime operations with the real binary: an upgrade by socket handoff under a steady
//! stream of requests (new connections and keep-alive) loses none and the old process exits;
//! a new instance whose config does not validate never takes over; SIGTERM lets an in-flight
//! request finish before exiting.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::*;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn config(body: &str) -> String {
    format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/tollgate.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
grace_period = "2s"
graceful_shutdown_timeout = "1s"

[[listeners]]
address = "{{listen}}"

[admin]
address = "{{admin}}"

[access_log]
target = "off"

[[routes]]
name = "version"
[routes.respond]
status = 200
body = "{body}"
"#
    )
}

/// Start `tollgate -u` on the running gateway's config file, rewritten first with `text`.
fn start_new_instance(gw: &Gateway, text: &str) -> std::process::Child {
    let rendered = text
        .replace("{dir}", &gw.dir.path().display().to_string())
        .replace("{listen}", &gw.addr.to_string())
        .replace("{admin}", &gw.admin.to_string());
    std::fs::write(&gw.config_path, rendered).unwrap();
    Command::new(tollgate_bin())
        .arg("-u")
        .arg("-c")
        .arg(&gw.config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn upgrade_under_load_loses_no_request() {
    let mut old = Gateway::start_full(&config("v1")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, v2) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let url = old.url("/");
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, failed, v2, url) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                v2.clone(),
                url.clone(),
            );
            std::thread::spawn(move || {
                // Half the workers keep connections alive, half open a new one per request.
                let keepalive = client();
                while !stop.load(Ordering::Relaxed) {
                    let result = if i % 2 == 0 {
                        keepalive.get(&url).send()
                    } else {
                        client().get(&url).header("connection", "close").send()
                    };
                    match result
                        .and_then(|r| r.error_for_status())
                        .and_then(|r| r.text())
                    {
                        Ok(body) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if body == "v2" {
                                v2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) > 50).then_some(())
    })
    .unwrap();

    let mut new = start_new_instance(&old, &config("v2"));
    old.signal("QUIT");
    wait_for(Duration::from_secs(15), || {
        (v2.load(Ordering::Relaxed) > 50).then_some(())
    })
    .expect("the new instance serves");
    assert_eq!(
        old.wait_exit(Duration::from_secs(15)),
        Some(0),
        "the old instance drains and exits"
    );
    let served_after = ok.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) > served_after + 50).then_some(())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let _ = new.kill();
    let _ = new.wait();
    eprintln!(
        "upgrade under load: {} requests served ({} by the new instance), {} failed",
        ok.load(Ordering::Relaxed),
        v2.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} requests served",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn an_invalid_config_never_takes_over() {
    let gw = Gateway::start_full(&config("v1")).unwrap();
    let mut bad = start_new_instance(
        &gw,
        "[[listeners]]\naddress = \"{listen}\"\n[[routes]]\nname = \"r\"\nupstream = \"ghost\"",
    );
    let status = bad.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(bad.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("upstream \"ghost\" is not defined"), "{err}");
    for _ in 0..10 {
        assert_eq!(
            client().get(gw.url("/")).send().unwrap().text().unwrap(),
            "v1"
        );
    }
}

#[test]
fn sigterm_drains_an_in_flight_request() {
    let slow = Backend::start("slow", |r| {
        common::backend::echo_reply("slow", r).delay(Duration::from_millis(1500))
    });
    // A grace period comfortably longer than the request still to run.
    let preamble = PREAMBLE.replace("grace_period = \"1s\"", "grace_period = \"5s\"");
    let mut gw = Gateway::start_full(&format!(
        r#"{preamble}
[upstreams.slow]
targets = [{{ address = "{}" }}]
[[routes]]
name = "slow"
upstream = "slow"
"#,
        slow.addr
    ))
    .unwrap();
    let url = gw.url("/slow");
    let request = std::thread::spawn(move || {
        let r = client().get(&url).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    wait_for(Duration::from_secs(10), || (slow.hits() == 1).then_some(())).unwrap();
    gw.signal("TERM");
    let (status, body) = request.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"backend\":\"slow\""));
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn sigint_exits_at_once() {
    let slow = Backend::start("slow", |r| {
        common::backend::echo_reply("slow", r).delay(Duration::from_secs(5))
    });
    let preamble = PREAMBLE.replace("grace_period = \"1s\"", "grace_period = \"30s\"");
    let mut gw = Gateway::start_full(&format!(
        r#"{preamble}
[upstreams.slow]
targets = [{{ address = "{}" }}]
[[routes]]
name = "slow"
upstream = "slow"
"#,
        slow.addr
    ))
    .unwrap();
    let url = gw.url("/slow");
    let request =
        std::thread::spawn(move || client().get(&url).send().map(|r| r.status().as_u16()));
    wait_for(Duration::from_secs(10), || (slow.hits() == 1).then_some(())).unwrap();
    let started = std::time::Instant::now();
    gw.signal("INT");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some(), "exited");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no 30 s grace period on SIGINT: {:?}",
        started.elapsed()
    );
    assert!(
        request.join().unwrap().is_err(),
        "the in-flight request is cut, not drained"
    );
}

/// After SIGQUIT the old instance exited about 8 s later with a 3 s grace period and a 2 s
/// shutdown timeout: Pingora's 5 s handoff wait came on top of the grace period.
#[test]
fn old_instance_exits_within_grace_period_plus_shutdown_timeout() {
    let text = config("v1")
        .replace("grace_period = \"2s\"", "grace_period = \"3s\"")
        .replace(
            "graceful_shutdown_timeout = \"1s\"",
            "graceful_shutdown_timeout = \"2s\"",
        );
    let mut old = Gateway::start_full(&text).unwrap();
    // A keep-alive client holds a connection open through the handoff.
    let keepalive = client();
    assert_eq!(keepalive.get(old.url("/")).send().unwrap().status(), 200);
    let mut new = start_new_instance(&old, &config("v2"));
    wait_for(Duration::from_secs(10), || {
        old.dir.path().join("upgrade.sock").exists().then_some(())
    })
    .expect("the new instance waits for the sockets");
    let started = std::time::Instant::now();
    old.signal("QUIT");
    let code = old.wait_exit(Duration::from_secs(15));
    let took = started.elapsed();
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(code, Some(0));
    assert!(
        took <= Duration::from_secs(3 + 2 + 1),
        "the old instance took {took:?} to exit"
    );
}
