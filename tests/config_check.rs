//! `tollgate -t`: broken configurations are refused with exit status 1 and a message naming
//! the file, the key path and what is wrong; valid ones pass without binding anything.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::process::Command;

const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:18080"
[upstreams.users]
targets = [{ address = "127.0.0.1:9001" }]
"#;

#[test]
fn broken_configs_name_the_key_and_the_problem() {
    // (config, key path, message fragment)
    let cases: &[(&str, &str, &str)] = &[
        ("[server]\nthreadz = 2\n[[listeners]]\naddress = \"127.0.0.1:1\"", "server.threadz", "unknown field `threadz`"),
        (
            &format!("{BASE}[[routes]]\nname = \"a\"\nupstream = \"billing\""),
            "routes[0].upstream",
            "upstream \"billing\" is not defined; defined: users",
        ),
        ("[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.e]\ntargets = []", "upstreams.e.targets", "at least one target"),
        (
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.e]\ntargets = [{ address = \"not an address\" }]",
            "upstreams.e.targets[0].address",
            "invalid target address",
        ),
        ("[[listeners]]\naddress = \"localhost\"", "listeners[0].address", "invalid listen address"),
        (
            &format!("{BASE}[[routes]]\nname = \"a\"\nupstream = \"users\"\n[[routes]]\nname = \"a\"\nupstream = \"users\""),
            "routes[1].name",
            "duplicate route name",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.w]\ntargets = [{ address = \"127.0.0.1:2\", weight = 0 }]",
            "upstreams.w.targets[0].weight",
            "between 1 and 1000",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.d]\ntargets = [{ address = \"127.0.0.1:2\" }]\nread_timeout = \"5 parsecs\"",
            "upstreams.d.read_timeout",
            "invalid duration",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.h]\npolicy = \"consistent_hash\"\ntargets = [{ address = \"127.0.0.1:2\" }]",
            "upstreams.h.hash_on",
            "consistent_hash needs hash_on",
        ),
        (
            &format!("{BASE}[[routes]]\nname = \"a\"\nupstream = \"users\"\n[routes.respond]\nstatus = 200"),
            "routes[0]",
            "set only one of upstream",
        ),
        (&format!("{BASE}[[routes]]\nname = \"a\""), "routes[0]", "needs an upstream to proxy to"),
        (
            &format!("{BASE}[[routes]]\nname = \"a\"\nupstream = \"users\"\nstrip_prefix = true"),
            "routes[0].strip_prefix",
            "needs path_prefix",
        ),
        (
            &format!("{BASE}[[routes]]\nname = \"a\"\nhosts = [\"bad host!\"]\nupstream = \"users\""),
            "routes[0].hosts[0]",
            "invalid host",
        ),
        (
            &format!("{BASE}[[routes]]\nname = \"a\"\nmethods = [\"get\"]\nupstream = \"users\""),
            "routes[0].methods[0]",
            "upper-case",
        ),
        ("[[listeners]]\naddress = \"127.0.0.1:1\"\n[server\nthreads = 1", "", "invalid TOML at line 3"),
        ("[server]\nthreads = 1", "listeners", "at least one [[listeners]]"),
        (
            &format!("{BASE}[[routes]]\nname = \"a\"\nupstream = \"users\"\nauth = [\"jwt:nope\"]"),
            "routes[0].auth[0]",
            "JWT provider \"nope\" is not defined",
        ),
        (
            &format!("{BASE}[limits]\ntrusted_proxies = [\"10.0.0.0/33\"]"),
            "limits.trusted_proxies[0]",
            "invalid CIDR",
        ),
    ];
    for (config, path, fragment) in cases {
        let (code, out) = check_config(config);
        assert_eq!(code, 1, "{config}\n{out}");
        assert!(out.contains("tollgate.toml"), "names the file: {out}");
        assert!(
            out.contains(&format!("{path}: ")) || path.is_empty(),
            "names {path}: {out}"
        );
        assert!(out.contains(fragment), "says {fragment:?}: {out}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let (code, out) = check_config(
        "[[listeners]]\naddress = \"nope\"\n[upstreams.u]\ntargets = []\n[[routes]]\nname = \"a\"\nupstream = \"missing\"",
    );
    assert_eq!(code, 1);
    for path in [
        "listeners[0].address",
        "upstreams.u.targets",
        "routes[0].upstream",
    ] {
        assert!(out.contains(path), "{path} in {out}");
    }
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn a_missing_file_is_named() {
    let (code, out) = check_config_file(std::path::Path::new("/nonexistent/tollgate.toml"));
    assert_eq!(code, 1);
    assert!(
        out.contains("/nonexistent/tollgate.toml") && out.contains("cannot read"),
        "{out}"
    );
}

#[test]
fn every_shipped_config_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out) = check_config_file(&path);
            assert_eq!(code, 0, "{}: {out}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn validation_binds_nothing() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let (code, out) = check_config(&format!(
        "[[listeners]]\naddress = \"{addr}\"\n[admin]\naddress = \"127.0.0.1:{}\"\n[[routes]]\nname = \"r\"\n[routes.respond]\nstatus = 200",
        addr.port()
    ));
    // Same port on the admin and the listener is a problem; fix it and bind nothing.
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("already used by listeners[0].address"),
        "{out}"
    );
    let (code, out) = check_config(&format!(
        "[[listeners]]\naddress = \"{addr}\"\n[admin]\nenabled = false\n[[routes]]\nname = \"r\"\n[routes.respond]\nstatus = 200"
    ));
    assert_eq!(code, 0, "a port in use does not matter to -t: {out}");
}

#[test]
fn cli_help_and_version() {
    let out = Command::new(tollgate_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(tollgate_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["-c", "-t", "-d", "-u"] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}

#[test]
fn an_invalid_config_makes_the_server_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[routes]]\nname = \"r\"\nupstream = \"ghost\"",
    )
    .unwrap();
    let out = Command::new(tollgate_bin())
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: routes[0].upstream: upstream \"ghost\" is not defined"),
        "{err}"
    );
}
