//! `tollgate -t`: broken configurations are refused with exit status 1 and a message naming
//! the file, the key path and what is wrong; valid ones pass without binding anything. Also
//! the rest of the command line: `--help`, `--version`, and a server that refuses to start
//! on a bad file.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A listener and one upstream, for the route cases.
const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:18080"
[upstreams.users]
targets = [{ address = "127.0.0.1:9001" }]
[upstreams.orders]
targets = [{ address = "127.0.0.1:9002" }]
"#;

/// A listener, for the cases that add their own upstream.
const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:18080\"\n";

/// Write `config` to a fresh file and run `tollgate -t -c FILE` on it.
fn check(config: &str) -> (i32, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out) = check_config_file(&path);
    (code, out, path, dir)
}

/// Assert that `out` has a line `FILE: PATH: ...FRAGMENT...` (or `FILE: ...FRAGMENT...`
/// when the problem has no key path).
fn assert_reported(out: &str, file: &Path, key: &str, fragment: &str) {
    let prefix = if key.is_empty() {
        format!("{}: ", file.display())
    } else {
        format!("{}: {key}: ", file.display())
    };
    assert!(
        out.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(fragment)),
        "expected a line starting {prefix:?} and saying {fragment:?}; got:\n{out}"
    );
}

#[test]
fn broken_configs_name_the_file_the_key_and_the_problem() {
    let route = |body: &str| format!("{BASE}[[routes]]\nname = \"a\"\n{body}");
    let upstream = |body: &str| format!("{LISTENER}[upstreams.u]\n{body}");
    // (what is broken, config, key path, message fragment)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown key",
            format!("[server]\nthreadz = 2\n{LISTENER}"),
            "server.threadz",
            "unknown key `threadz`; did you mean `threads`? (valid: threads, work_stealing,",
        ),
        (
            "CORS header name that is not one (reported at the field)",
            route("upstream = \"users\"\n[routes.cors]\nallow_origins = [\"https://a.test\"]\nallow_headers = [\" \"]"),
            "routes[0].cors.allow_headers[0]",
            "invalid header name \" \"",
        ),
        (
            "unknown retry condition",
            route("upstream = \"users\"\nretry_on = [\"sometimes\"]"),
            "routes[0].retry_on[0]",
            "unknown value `sometimes`",
        ),
        (
            "path prefix that requests can never match",
            route("upstream = \"users\"\npath_prefix = \"/a/../b\""),
            "routes[0].path_prefix",
            "write the path in canonical form: \"/b\"",
        ),
        (
            "rewrite prefix with a dot segment",
            route("upstream = \"users\"\npath_prefix = \"/a\"\nrewrite_prefix = \"/x/..\""),
            "routes[0].rewrite_prefix",
            "canonical form",
        ),
        (
            "unknown underscore policy",
            format!("[limits]\nunderscore_headers = \"ignore\"\n{BASE}"),
            "limits.underscore_headers",
            "unknown value `ignore` (valid: drop, reject, allow)",
        ),
        (
            "undefined upstream",
            route("upstream = \"billing\""),
            "routes[0].upstream",
            "upstream \"billing\" is not defined; defined: orders, users",
        ),
        (
            "empty target list",
            upstream("targets = []"),
            "upstreams.u.targets",
            "must list at least one target",
        ),
        (
            "target address without a port",
            upstream("targets = [{ address = \"not an address\" }]"),
            "upstreams.u.targets[0].address",
            "invalid target address \"not an address\"",
        ),
        (
            "target port out of range",
            upstream("targets = [{ address = \"127.0.0.1:99999\" }]"),
            "upstreams.u.targets[0].address",
            "invalid target address \"127.0.0.1:99999\"",
        ),
        (
            "listen address without a port",
            "[[listeners]]\naddress = \"localhost\"".into(),
            "listeners[0].address",
            "invalid listen address \"localhost\"",
        ),
        (
            "duplicate route names",
            format!(
                "{BASE}[[routes]]\nname = \"a\"\nupstream = \"users\"\n\
                 [[routes]]\nname = \"a\"\nupstream = \"orders\""
            ),
            "routes[1].name",
            "duplicate route name \"a\"; routes[0] already uses it",
        ),
        (
            "weight 0",
            upstream("targets = [{ address = \"127.0.0.1:2\", weight = 0 }]"),
            "upstreams.u.targets[0].weight",
            "must be between 1 and 1000, got 0",
        ),
        (
            "bad duration",
            upstream("targets = [{ address = \"127.0.0.1:2\" }]\nread_timeout = \"5 parsecs\""),
            "upstreams.u.read_timeout",
            "invalid duration \"5 parsecs\"",
        ),
        (
            "consistent_hash without hash_on",
            upstream("policy = \"consistent_hash\"\ntargets = [{ address = \"127.0.0.1:2\" }]"),
            "upstreams.u.hash_on",
            "consistent_hash needs hash_on",
        ),
        (
            "unknown balancing policy",
            upstream("policy = \"fastest\"\ntargets = [{ address = \"127.0.0.1:2\" }]"),
            "upstreams.u.policy",
            "unknown value `fastest` (valid: round_robin, least_connections, consistent_hash)",
        ),
        (
            "health check threshold 0",
            upstream(
                "targets = [{ address = \"127.0.0.1:2\" }]\n\
                 [upstreams.u.health_check]\nunhealthy_threshold = 0",
            ),
            "upstreams.u.health_check.unhealthy_threshold",
            "must be between 1 and 100, got 0",
        ),
        (
            "both upstream and respond",
            route("upstream = \"users\"\n[routes.respond]\nstatus = 200"),
            "routes[0]",
            "set only one of upstream, [respond]",
        ),
        (
            "neither upstream nor respond",
            route(""),
            "routes[0]",
            "needs an upstream to proxy to, a [respond] section",
        ),
        (
            "strip_prefix without path_prefix",
            route("upstream = \"users\"\nstrip_prefix = true"),
            "routes[0].strip_prefix",
            "needs path_prefix",
        ),
        (
            "bad host pattern",
            route("hosts = [\"ok.example.com\", \"bad host!\"]\nupstream = \"users\""),
            "routes[0].hosts[1]",
            "invalid host \"bad host!\"",
        ),
        (
            "lower-case method",
            route("methods = [\"get\"]\nupstream = \"users\""),
            "routes[0].methods[0]",
            "invalid method \"get\"; write it upper-case",
        ),
        (
            "invalid TOML syntax",
            format!("{LISTENER}[server\nthreads = 1"),
            "",
            "invalid TOML at line 3",
        ),
        (
            "no listeners",
            "[server]\nthreads = 1".into(),
            "listeners",
            "at least one [[listeners]]",
        ),
        (
            "wrong value type",
            format!("[server]\nthreads = \"two\"\n{LISTENER}"),
            "server.threads",
            "expected a whole number, got string \"two\" (line 2, column 11)",
        ),
        (
            "a duration written as a bare number",
            format!("[limits]\nheader_timeout = 5\n{LISTENER}"),
            "limits.header_timeout",
            "expected a duration like \"5s\", got the number 5; write \"5s\" or \"5ms\" (line 2, column 18)",
        ),
        (
            "two routes with the same match (the second is unreachable)",
            format!("{BASE}[[routes]]\nname = \"a\"\npath_prefix = \"/x\"\nupstream = \"users\"\n[[routes]]\nname = \"b\"\npath_prefix = \"/x\"\nupstream = \"orders\""),
            "routes[1]",
            "matches exactly what routes[0] (\"a\") matches, so it could never be reached",
        ),
        (
            "a misspelled value",
            upstream("policy = \"round_robbin\"\ntargets = [{ address = \"127.0.0.1:2\" }]"),
            "upstreams.u.policy",
            "unknown value `round_robbin`; did you mean `round_robin`?",
        ),
        (
            "a table where a list of tables belongs",
            format!("{LISTENER}[routes]\nname = \"a\""),
            "routes",
            "write [[routes]] once per entry (an array of tables), not [routes]",
        ),
    ];
    for (what, config, key, fragment) in &cases {
        let (code, out, file, _dir) = check(config);
        assert_eq!(code, 1, "{what}: exit status; output:\n{out}");
        assert_reported(&out, &file, key, fragment);
    }
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let (code, out) = check_config_file(&path);
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, &path, "", "cannot read file");
}

#[test]
fn every_problem_is_reported_at_once() {
    let (code, out, file, _dir) = check(
        "[[listeners]]\naddress = \"nope\"\n\
         [upstreams.u]\ntargets = []\n\
         [[routes]]\nname = \"a\"\nupstream = \"missing\"\n\
         [[routes]]\nname = \"b\"\nupstream = \"u\"\nmethods = [\"post\"]",
    );
    assert_eq!(code, 1, "{out}");
    assert_reported(
        &out,
        &file,
        "listeners[0].address",
        "invalid listen address",
    );
    assert_reported(&out, &file, "upstreams.u.targets", "at least one target");
    assert_reported(
        &out,
        &file,
        "routes[0].upstream",
        "\"missing\" is not defined",
    );
    assert_reported(&out, &file, "routes[1].methods[0]", "upper-case");
    assert_eq!(out.lines().count(), 4, "one line per problem:\n{out}");
}

#[test]
fn every_shipped_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out) = check_config_file(&path);
            assert_eq!(code, 0, "{}: {out}", path.display());
            assert!(out.contains("configuration is valid"), "{out}");
            checked.push(path);
        }
    }
    assert!(
        checked.iter().any(|p| p.ends_with("tollgate.toml")),
        "conf/tollgate.toml checked: {checked:?}"
    );
}

#[test]
fn validation_binds_nothing() {
    // The test holds both the listener's and the admin listener's ports: `-t` must not
    // need them, since it binds nothing.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let held_admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let (addr, admin) = (held.local_addr().unwrap(), held_admin.local_addr().unwrap());
    let (code, out, _, _dir) = check(&format!(
        "[[listeners]]\naddress = \"{addr}\"\n[admin]\naddress = \"{admin}\"\n\
         [[routes]]\nname = \"r\"\n[routes.respond]\nstatus = 200"
    ));
    assert_eq!(code, 0, "a port in use does not matter to -t: {out}");
    assert!(out.contains("configuration is valid"), "{out}");

    // The same config does need the port to run: the server refuses to start on it, with
    // exit status 1 and the key whose address is taken.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\npid_file = \"{d}/pid\"\nupgrade_sock = \"{d}/up.sock\"\n\
             [[listeners]]\naddress = \"{addr}\"\n[admin]\nenabled = false\n\
             [[routes]]\nname = \"r\"\n[routes.respond]\nstatus = 200",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(tollgate_bin())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let exited = wait_for(Duration::from_secs(20), || child.try_wait().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let status = exited
        .unwrap_or_else(|| panic!("the server kept running without its listen address: {stderr}"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_reported(
        &stderr,
        &path,
        "listeners[0].address",
        &format!("cannot listen on {addr}"),
    );
    drop((held, held_admin));
}

#[test]
fn cli_help_and_version() {
    let out = Command::new(tollgate_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        concat!("tollgate ", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(tollgate_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-c, --config",
        "-t, --test",
        "-d, --daemon",
        "-u, --upgrade",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}

#[test]
fn a_valid_config_starts_and_serves() {
    let body = r#"
[[routes]]
name = "hello"
path = "/hello"
[routes.respond]
status = 200
body = "hi"
"#;
    let gw = Gateway::start(body);
    let (code, out) = check_config_file(&gw.config_path);
    assert_eq!(code, 0, "{out}");
    let resp = client().get(gw.url("/hello")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "hi");
}

#[test]
fn an_invalid_config_makes_the_server_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let listen = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\naddress = \"{listen}\"\n[admin]\nenabled = false\n\
             [[routes]]\nname = \"r\"\nupstream = \"ghost\""
        ),
    )
    .unwrap();
    let out = Command::new(tollgate_bin())
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_reported(
        &err,
        &path,
        "routes[0].upstream",
        "upstream \"ghost\" is not defined",
    );
}

/// A CIDR with host bits was accepted silently: `-t` still accepts it, and says what it means.
#[test]
fn a_cidr_with_host_bits_is_a_warning() {
    let (code, out, file, _dir) = check(&format!(
        "[limits]\nip_allow = [\"203.0.113.5/24\", \"10.0.0.0/8\"]\n{BASE}[[routes]]\nname = \"a\"\nupstream = \"users\"\nip_deny = [\"2001:db8::1/32\"]"
    ));
    assert_eq!(code, 0, "{out}");
    assert_reported(
        &out,
        &file,
        "limits.ip_allow[0]",
        "warning: 203.0.113.5/24 has host bits set and means 203.0.113.0/24; write that",
    );
    assert_reported(&out, &file, "routes[0].ip_deny[0]", "means 2001:db8::/32");
    assert!(!out.contains("ip_allow[1]"), "{out}");
}

/// `a_valid_config_starts_and_serves` failed when `free_port` gave the listener and the admin
/// address the same port (the kernel hands a just-released port out again): the gateway
/// refused the config. 500 ports from one process are all different.
#[test]
fn free_port_gave_the_listener_and_admin_the_same_port() {
    let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len());
}

/// Regression: `0.0.0.0:P` beside `127.0.0.1:P` passed `-t`, then the start retried the
/// second bind for 30 s while `/readyz` said ready. `-t` now names both keys.
#[test]
fn listeners_that_cannot_all_bind_passed_dash_t() {
    let port = free_port();
    for (a, b) in [
        (format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")),
        (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")),
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
    ] {
        let (code, out, path, _dir) = check(&format!(
            "[[listeners]]\naddress = \"{a}\"\n[[listeners]]\naddress = \"{b}\"\n"
        ));
        assert_eq!(code, 1, "{out}");
        assert_reported(
            &out,
            &path,
            "listeners[1].address",
            "collides with listeners[0].address",
        );
    }
    // The admin listener against a proxy listener, too.
    let (code, out, path, _dir) = check(&format!(
        "[[listeners]]\naddress = \"0.0.0.0:{port}\"\n[admin]\naddress = \"127.0.0.1:{port}\"\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert_reported(
        &out,
        &path,
        "admin.address",
        "collides with listeners[0].address",
    );
    // Different ports, or different families, are fine.
    let (code, out, _, _dir) = check(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[[listeners]]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"[::1]:{port}\"\n",
        free_port()
    ));
    assert_eq!(code, 0, "{out}");
}

/// Regression: relative paths resolved against the working directory, so
/// `tollgate -t -c /etc/tollgate/tollgate.toml` run from `/` could not find the files beside
/// the configuration.
#[test]
fn relative_paths_resolved_against_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwt.secret"),
        "relative-secret-0123456789abcdef0123456789",
    )
    .unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(
        &path,
        format!(
            "{LISTENER}[auth.jwt.main]\nalgorithms = [\"HS256\"]\nsecret_file = \"jwt.secret\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(tollgate_bin())
        .args(["-t", "-c"])
        .arg(&path)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression: an undefined upstream one letter off was reported without a suggestion.
#[test]
fn an_undefined_upstream_one_letter_off_got_no_did_you_mean() {
    let (code, out, path, _dir) = check(&format!(
        "{BASE}[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"order\"\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert_reported(
        &out,
        &path,
        "routes[0].upstream",
        "did you mean \"orders\"?",
    );
}

/// Regression: `tollgate schema | head` panicked with a backtrace when the reader left.
#[test]
fn schema_piped_into_head_panicked() {
    let mut child = Command::new(tollgate_bin())
        .arg("schema")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the schema is written, as `head` does after its lines.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}

/// Regression: `server = []` (and any table written as an array) passed `-t`: serde took
/// the empty array for a section with every key defaulted.
#[test]
fn server_as_an_empty_array_passed_dash_t() {
    let (code, out, path, _dir) = check(&format!("server = []\n{LISTENER}"));
    assert_eq!(code, 1, "{out}");
    assert_reported(
        &out,
        &path,
        "server",
        "expected a table ([server]), got an array (line 1, column 10)",
    );
    let (code, out, path, _dir) = check(&format!(
        "{BASE}[[routes]]\nname = \"r\"\nupstream = \"users\"\n[[routes.cache]]\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert_reported(
        &out,
        &path,
        "routes[0].cache",
        "expected a table ([cache]), got an array",
    );
}

/// Regression: problems found after parsing (an undefined upstream, a bad CIDR, ...) named
/// the key but gave no line, unlike parse errors.
#[test]
fn problems_found_after_parsing_had_no_line_number() {
    let config = format!(
        "{BASE}[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"users\"\n\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"billing\"\nip_allow = [\"10.0.0.0/8\", \"not-a-cidr\"]\n"
    );
    let line_of = |needle: &str| config.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let (code, out, path, _dir) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert_reported(
        &out,
        &path,
        "routes[1].upstream",
        &format!("(route \"b\", line {}, column 12)", line_of("\"billing\"")),
    );
    assert_reported(
        &out,
        &path,
        "routes[1].ip_allow[1]",
        &format!("(route \"b\", line {}, column 27)", line_of("not-a-cidr")),
    );
}

/// Header names, header values and methods are parsed as the file is read, in one place
/// (`config::types::Parsed`), and every bad one is reported at once at its own key with its
/// line: a parse error would have stopped at the first.
#[test]
fn bad_header_names_and_methods_are_all_reported_with_their_lines() {
    let config = format!(
        "{BASE}[auth.api_key]\nheader = \"x key\"\n\n[[routes]]\nname = \"a\"\nmethods = [\"GET\", \"pOST\"]\nupstream = \"users\"\n[routes.request_headers]\nremove = [\"ok\", \"bad name\"]\nset = {{ x-env = \"line\\nbreak\" }}\n[routes.cors]\nallow_origins = [\"https://a.test\"]\nexpose_headers = [\"x(y)\"]\n"
    );
    let line_of = |needle: &str| config.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let (code, out, path, _dir) = check(&config);
    assert_eq!(code, 1, "{out}");
    for (key, fragment, needle) in [
        (
            "auth.api_key.header",
            "invalid header name \"x key\"",
            "x key",
        ),
        (
            "routes[0].methods[1]",
            "invalid method \"pOST\"; write it upper-case",
            "pOST",
        ),
        (
            "routes[0].request_headers.remove[1]",
            "invalid header name \"bad name\"",
            "bad name",
        ),
        (
            "routes[0].request_headers.set.x-env",
            "invalid header value",
            "x-env",
        ),
        (
            "routes[0].cors.expose_headers[0]",
            "invalid header name \"x(y)\"",
            "x(y)",
        ),
    ] {
        assert_reported(&out, &path, key, fragment);
        assert_reported(&out, &path, key, &format!("line {}", line_of(needle)));
    }
}
