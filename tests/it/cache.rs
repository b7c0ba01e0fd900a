//! The response cache end to end: a real gateway process in front of a real backend that
//! counts what reaches it. MISS then HIT with one upstream call; TTL expiry; `no-store`,
//! `private`, `no-cache`, `Set-Cookie`; `Vary`; host in the key; 100 concurrent requests for a
//! cold key make one upstream call; purge by path and prefix; authenticated requests shared
//! only when the route says so; stale served when the upstream breaks; bounded size with
//! eviction; oversized bodies pass through; metrics.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    gw: Gateway,
    backend: Backend,
    /// While set, the backend closes every connection without answering.
    broken: Arc<AtomicBool>,
}

impl Setup {
    /// Upstream calls for `path` (path and query as sent upstream).
    fn calls(&self, path: &str) -> usize {
        self.backend
            .requests()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}

/// The backend answers `PATH #N` (N counts every request it served) with caching headers
/// chosen by the path.
fn setup() -> Setup {
    let counter = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    let b = broken.clone();
    let backend = Backend::start("app", move |r| {
        if b.load(Ordering::SeqCst) {
            return Reply::status(200).cut_after(0);
        }
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let mut reply = Reply::status(200).body(format!("{} #{n}", r.path));
        let p = r.path.as_str();
        if p.contains("nostore") {
            reply = reply.header("cache-control", "no-store");
        } else if p.contains("private") {
            reply = reply.header("cache-control", "private, max-age=60");
        } else if p.contains("nocache") {
            reply = reply.header("cache-control", "no-cache");
        } else if p.contains("cookie") {
            reply = reply.header("set-cookie", "session=secret");
        } else if p.contains("maxage") {
            reply = reply.header("cache-control", "max-age=1");
        } else if p.contains("vary") {
            let lang = r.header("accept-language").unwrap_or("none").to_string();
            reply = reply
                .header("vary", "Accept-Language")
                .body(format!("{} #{n} lang={lang}", r.path));
        } else if p.contains("big") {
            reply = reply.body(vec![b'x'; 16 * 1024]);
        } else if p.contains("kib") {
            reply = reply.body(vec![b'k'; 4 * 1024]);
        } else if p.contains("slow") {
            reply = reply.delay(Duration::from_millis(400));
        } else if p.contains("error") {
            reply = Reply::status(500).body("boom");
        }
        reply
    });
    let gw = Gateway::start(&format!(
        r#"
[cache]
max_size = "64KiB"
max_object_size = "8KiB"
lock_timeout = "5s"

[upstreams.app]
targets = [{{ address = "{addr}" }}]

[consumers.alice]
keys = ["alice-key-0123456789"]
[consumers.bob]
keys = ["bob-key-0123456789"]

[[routes]]
name = "pub"
path_prefix = "/pub"
upstream = "app"
[routes.cache]
ttl = "60s"

[[routes]]
name = "short"
path_prefix = "/short"
upstream = "app"
[routes.cache]
ttl = "1s"

[[routes]]
name = "stale"
path_prefix = "/stale"
upstream = "app"
retries = 0
[routes.cache]
ttl = "1s"
stale_if_error = "60s"

[[routes]]
name = "keyed"
path_prefix = "/keyed"
upstream = "app"
auth = ["api_key"]
[routes.cache]
ttl = "60s"

[[routes]]
name = "shared"
path_prefix = "/shared"
upstream = "app"
auth = ["api_key"]
[routes.cache]
ttl = "60s"
authenticated = "shared"

[[routes]]
name = "mine"
path_prefix = "/mine"
upstream = "app"
auth = ["api_key"]
[routes.cache]
ttl = "60s"
authenticated = "per_consumer"

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "app"
"#,
        addr = backend.addr
    ));
    Setup {
        gw,
        backend,
        broken,
    }
}

/// GET `path` with extra headers; returns (status, X-Cache, body).
fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let x_cache = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, x_cache, resp.text().unwrap())
}

#[test]
fn miss_then_hit_calls_upstream_once() {
    let s = setup();
    let (status, x1, b1) = get(&s.gw, "/pub/item?id=1", &[]);
    assert_eq!((status, x1.as_str()), (200, "MISS"));
    let (_, x2, b2) = get(&s.gw, "/pub/item?id=1", &[]);
    assert_eq!(x2, "HIT");
    assert_eq!(b1, b2, "a hit serves the stored body");
    assert_eq!(s.calls("/pub/item?id=1"), 1);
    // Another query string is another key.
    let (_, x3, _) = get(&s.gw, "/pub/item?id=2", &[]);
    assert_eq!(x3, "MISS");
    // A hit still carries the gateway's own headers, fresh for this request.
    let resp = client().get(s.gw.url("/pub/item?id=1")).send().unwrap();
    assert_eq!(resp.headers()["x-cache"], "HIT");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // HEAD is answered from GET's entry, without a body.
    let head = client().head(s.gw.url("/pub/item?id=1")).send().unwrap();
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert_eq!(s.calls("/pub/item?id=1"), 1);
    // The access log records the verdict.
    let line =
        s.gw.wait_access_log(|l| l["path"] == "/pub/item" && l["cache"] == "HIT");
    assert_eq!(line["route"], "pub");
    // A route without [routes.cache] says nothing about caching.
    let plain = client().get(s.gw.url("/plain/x")).send().unwrap();
    assert!(plain.headers().get("x-cache").is_none());
}

#[test]
fn route_ttl_and_max_age_expire() {
    let s = setup();
    assert_eq!(get(&s.gw, "/short/a", &[]).1, "MISS");
    assert_eq!(get(&s.gw, "/short/a", &[]).1, "HIT");
    // The upstream's max-age (1 s) wins over the route's 60 s.
    assert_eq!(get(&s.gw, "/pub/maxage", &[]).1, "MISS");
    assert_eq!(get(&s.gw, "/pub/maxage", &[]).1, "HIT");
    std::thread::sleep(Duration::from_millis(2100));
    let (_, x, _) = get(&s.gw, "/short/a", &[]);
    assert_eq!(x, "MISS", "expired after the route's 1 s TTL");
    assert_eq!(s.calls("/short/a"), 2);
    assert_eq!(get(&s.gw, "/pub/maxage", &[]).1, "MISS");
    assert_eq!(s.calls("/pub/maxage"), 2);
}

#[test]
fn uncacheable_responses_bypass() {
    let s = setup();
    for path in [
        "/pub/nostore",
        "/pub/private",
        "/pub/cookie",
        "/pub/big",
        "/pub/error",
    ] {
        let (_, x1, _) = get(&s.gw, path, &[]);
        let (_, x2, _) = get(&s.gw, path, &[]);
        assert_eq!((x1.as_str(), x2.as_str()), ("BYPASS", "BYPASS"), "{path}");
        assert_eq!(s.calls(path), 2, "{path} reaches the upstream every time");
    }
    // A 16 KiB body is larger than max_object_size but still reaches the client whole.
    let (_, _, body) = get(&s.gw, "/pub/big", &[]);
    assert_eq!(body.len(), 16 * 1024);
    // no-cache: stored, but revalidated with the upstream before every use.
    get(&s.gw, "/pub/nocache", &[]);
    get(&s.gw, "/pub/nocache", &[]);
    assert_eq!(s.calls("/pub/nocache"), 2);
    // Other methods are not cached.
    let post = client().post(s.gw.url("/pub/item")).send().unwrap();
    assert_eq!(post.headers()["x-cache"], "BYPASS");
    client().post(s.gw.url("/pub/item")).send().unwrap();
    assert_eq!(s.calls("/pub/item"), 2);
}

#[test]
fn vary_separates_entries() {
    let s = setup();
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    let (_, x, body_en) = get(&s.gw, "/pub/vary", &en);
    assert_eq!(x, "MISS");
    assert!(body_en.ends_with("lang=en"));
    let (_, x, body_fr) = get(&s.gw, "/pub/vary", &fr);
    assert_eq!(x, "MISS", "another Accept-Language is another variant");
    assert!(body_fr.ends_with("lang=fr"));
    let (_, x, again_en) = get(&s.gw, "/pub/vary", &en);
    assert_eq!((x.as_str(), again_en.as_str()), ("HIT", body_en.as_str()));
    let (_, x, again_fr) = get(&s.gw, "/pub/vary", &fr);
    assert_eq!((x.as_str(), again_fr.as_str()), ("HIT", body_fr.as_str()));
    assert_eq!(s.calls("/pub/vary"), 2);
}

#[test]
fn host_is_part_of_the_key() {
    let s = setup();
    let req = |host: &str| {
        s.gw.raw(
            format!("GET /pub/h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
    };
    let a1 = req("a.example");
    assert!(a1.contains("x-cache: MISS"), "{a1}");
    let b1 = req("b.example");
    assert!(
        b1.contains("x-cache: MISS"),
        "another host must not get a.example's entry: {b1}"
    );
    let a2 = req("A.EXAMPLE:8080");
    assert!(
        a2.contains("x-cache: HIT"),
        "host compared without case or port: {a2}"
    );
    assert_eq!(s.calls("/pub/h"), 2);
}

#[test]
fn concurrent_cold_requests_fetch_once() {
    let s = setup();
    let url = s.gw.url("/pub/slow");
    let results: Vec<(u16, String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    let resp = client().get(&url).send().unwrap();
                    let status = resp.status().as_u16();
                    let x = resp.headers()["x-cache"].to_str().unwrap().to_string();
                    (status, x, resp.text().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        s.calls("/pub/slow"),
        1,
        "the stampede lock lets one request through"
    );
    assert!(results.iter().all(|(status, _, _)| *status == 200));
    let body = &results[0].2;
    assert!(results.iter().all(|(_, _, b)| b == body));
    let misses = results.iter().filter(|(_, x, _)| x == "MISS").count();
    let hits = results.iter().filter(|(_, x, _)| x == "HIT").count();
    assert_eq!((misses, hits), (1, 99));
}

#[test]
fn purge_by_path_and_prefix() {
    let s = setup();
    for p in ["/pub/p/a", "/pub/p/b?x=1", "/pub/q"] {
        assert_eq!(get(&s.gw, p, &[]).1, "MISS");
        assert_eq!(get(&s.gw, p, &[]).1, "HIT");
    }
    let purge = |query: &str| {
        let resp = client()
            .post(s.gw.admin_url(&format!("/cache/purge?{query}")))
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    // One exact path and query, on a given host.
    let (status, body) = purge("host=127.0.0.1&path=%2Fpub%2Fp%2Fb%3Fx%3D1");
    assert_eq!((status, body.as_str()), (200, r#"{"purged":1}"#));
    assert_eq!(get(&s.gw, "/pub/p/b?x=1", &[]).1, "MISS");
    assert_eq!(get(&s.gw, "/pub/p/a", &[]).1, "HIT");
    // A host with no entries purges nothing.
    assert_eq!(purge("host=other.example&prefix=/").1, r#"{"purged":0}"#);
    // Everything under a prefix, any host.
    let (status, body) = purge("prefix=/pub/p/");
    assert_eq!((status, body.as_str()), (200, r#"{"purged":2}"#));
    assert_eq!(get(&s.gw, "/pub/p/a", &[]).1, "MISS");
    assert_eq!(get(&s.gw, "/pub/q", &[]).1, "HIT");
    // Bad requests say what is wrong and purge nothing.
    let (status, body) = purge("path=no-slash");
    assert_eq!(status, 400);
    assert!(body.contains("must start with /"), "{body}");
    assert_eq!(purge("").0, 400);
    assert_eq!(purge("path=/a&prefix=/b").0, 400);
    let get_purge = client()
        .get(s.gw.admin_url("/cache/purge?prefix=/"))
        .send()
        .unwrap();
    assert_eq!(get_purge.status().as_u16(), 405);
    assert_eq!(get(&s.gw, "/pub/q", &[]).1, "HIT");
}

#[test]
fn authenticated_requests_are_not_shared_unless_configured() {
    let s = setup();
    let alice = [("x-api-key", "alice-key-0123456789")];
    let bob = [("x-api-key", "bob-key-0123456789")];
    // Default: authenticated requests bypass the cache.
    assert_eq!(get(&s.gw, "/keyed/me", &alice).1, "BYPASS");
    assert_eq!(get(&s.gw, "/keyed/me", &alice).1, "BYPASS");
    assert_eq!(s.calls("/keyed/me"), 2);
    // Rejected requests never reach the cache.
    assert_eq!(get(&s.gw, "/keyed/me", &[]).0, 401);
    // A credential on a public route bypasses too.
    assert_eq!(
        get(&s.gw, "/pub/auth", &[("authorization", "Bearer x")]).1,
        "BYPASS"
    );
    // shared: one entry for every caller.
    let (_, x, body_a) = get(&s.gw, "/shared/doc", &alice);
    assert_eq!(x, "MISS");
    let (_, x, body_b) = get(&s.gw, "/shared/doc", &bob);
    assert_eq!((x.as_str(), body_b.as_str()), ("HIT", body_a.as_str()));
    assert_eq!(s.calls("/shared/doc"), 1);
    // per_consumer: each consumer its own entry.
    let (_, x, mine_a) = get(&s.gw, "/mine/doc", &alice);
    assert_eq!(x, "MISS");
    let (_, x, mine_b) = get(&s.gw, "/mine/doc", &bob);
    assert_eq!(x, "MISS", "bob must not get alice's entry");
    assert_ne!(mine_a, mine_b);
    let (_, x, again_a) = get(&s.gw, "/mine/doc", &alice);
    assert_eq!((x.as_str(), again_a.as_str()), ("HIT", mine_a.as_str()));
    assert_eq!(s.calls("/mine/doc"), 2);
}

#[test]
fn stale_entry_served_when_upstream_breaks() {
    let s = setup();
    let (_, x, body) = get(&s.gw, "/stale/doc", &[]);
    assert_eq!(x, "MISS");
    std::thread::sleep(Duration::from_millis(2100));
    s.broken.store(true, Ordering::SeqCst);
    let (status, x, stale) = get(&s.gw, "/stale/doc", &[]);
    assert_eq!((status, x.as_str()), (200, "STALE"));
    assert_eq!(stale, body);
    // Without stale_if_error an expired entry is not served when the upstream fails.
    assert_eq!(get(&s.gw, "/short/doc", &[]).0, 502);
}

#[test]
fn size_is_bounded_by_eviction() {
    let s = setup();
    // 40 bodies of 4 KiB into a 64 KiB cache.
    for i in 0..40 {
        assert_eq!(get(&s.gw, &format!("/pub/kib/{i}"), &[]).1, "MISS");
    }
    let text = client()
        .get(s.gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let size = metric(&text, "tollgate_cache_size_bytes", &[]).unwrap();
    let entries = metric(&text, "tollgate_cache_entries", &[]).unwrap();
    let evicted = metric(&text, "tollgate_cache_evictions_total", &[]).unwrap();
    assert!(size <= 64.0 * 1024.0, "cache holds {size} bytes");
    assert!(size > 32.0 * 1024.0, "cache holds {size} bytes");
    assert!((8.0..40.0).contains(&entries), "{entries} entries");
    assert!(evicted >= 40.0 - entries, "{evicted} evicted");
    // The least recently used went first; the newest is still there.
    assert_eq!(get(&s.gw, "/pub/kib/39", &[]).1, "HIT");
    assert_eq!(get(&s.gw, "/pub/kib/0", &[]).1, "MISS");
}

#[test]
fn cache_results_are_counted_per_route() {
    let s = setup();
    get(&s.gw, "/pub/m", &[]);
    get(&s.gw, "/pub/m", &[]);
    get(&s.gw, "/pub/m", &[]);
    get(&s.gw, "/pub/nostore", &[]);
    let text = wait_for(Duration::from_secs(5), || {
        let text = client()
            .get(s.gw.admin_url("/metrics"))
            .send()
            .ok()?
            .text()
            .ok()?;
        let bypass = metric(
            &text,
            "tollgate_cache_requests_total",
            &[("route", "pub"), ("result", "bypass")],
        )?;
        (bypass >= 1.0).then_some(text)
    })
    .expect("cache metrics appear");
    let count = |result: &str| {
        metric(
            &text,
            "tollgate_cache_requests_total",
            &[("route", "pub"), ("result", result)],
        )
    };
    assert_eq!(count("miss"), Some(1.0));
    assert_eq!(count("hit"), Some(2.0));
    assert_eq!(count("bypass"), Some(1.0));
}

#[test]
fn cache_config_errors_are_reported() {
    let (code, out) = check_config(
        r#"
[cache]
max_size = "1KiB"
max_object_size = "2KiB"

[upstreams.app]
targets = [{ address = "127.0.0.1:1" }]

[[routes]]
name = "a"
upstream = "app"
[routes.cache]
ttl = "0s"
authenticated = "per_consumer"

[[routes]]
name = "b"
path = "/b"
[routes.respond]
status = 200
[routes.cache]
ttl = "1s"
"#,
    );
    assert_eq!(code, 1, "{out}");
    for expected in [
        "cache.max_object_size",
        "routes[0].cache.ttl",
        "routes[0].cache.authenticated",
        "per_consumer needs",
        "routes[1].cache: caching applies only to routes with an upstream",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // A value that is not one of the choices is refused as the file is read.
    let (code, out) = check_config(
        "[[listeners]]\naddress = \"127.0.0.1:18080\"\n[upstreams.app]\ntargets = [{ address = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"a\"\nupstream = \"app\"\n[routes.cache]\nttl = \"1s\"\nauthenticated = \"everyone\"\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[0].cache.authenticated: unknown value `everyone`"),
        "{out}"
    );
}

/// Regression: the first cache store logged Pingora's "no header compression dictionary
/// loaded - use set_compression_dict_content()", which no operator can act on.
#[test]
fn first_cache_store_logged_pingoras_compression_dictionary_warning() {
    let s = setup();
    assert_eq!(get(&s.gw, "/pub/dict", &[]).1, "MISS");
    assert_eq!(get(&s.gw, "/pub/dict", &[]).1, "HIT");
    let stderr = s.gw.stderr();
    assert!(!stderr.contains("compression dictionary"), "{stderr}");
}
