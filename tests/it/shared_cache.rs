//! `[cache.shared]`: Redis behind the in-memory cache of several real gateway processes.
//! One instance's fetch is another's hit, a stampede over the fleet costs one upstream
//! call, a purge on one admin listener empties every instance, and a Redis that stops
//! answering leaves a memory-only cache that does not wait on it per request.
#![allow(clippy::unwrap_used)]

use crate::common::redis::Redis;
use crate::common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(redis: &Redis, app: &Backend, timeout: &str) -> String {
    format!(
        r#"
[cache]
max_size = "4MiB"
lock_timeout = "5s"
[cache.shared]
redis = "{}"
timeout = "{timeout}"

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "cached"
path_prefix = "/c"
upstream = "app"
[routes.cache]
ttl = "60s"
"#,
        redis.url(),
        app.addr
    )
}

/// A backend that counts its requests per path and answers slowly enough for a stampede.
fn origin(delay: Duration) -> (Backend, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let b = Backend::start("origin", move |r| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::status(200)
            .header("content-type", "text/plain")
            .header("x-fetch", &n.to_string())
            .body(format!("body of {}", r.path))
            .delay(delay)
    });
    (b, calls)
}

/// Entries in Redis (`PREFIX{<hash>}`; not locks, not the purge index).
fn entries(redis: &Redis) -> usize {
    let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:{*}"]);
    keys.lines().filter(|k| !k.trim().is_empty()).count()
}

fn get(gw: &Gateway, path: &str) -> (u16, String, String) {
    let (status, verdict, body, _) = get_n(gw, path);
    (status, verdict, body)
}

/// Also which fetch of the origin the answer came from.
fn get_n(gw: &Gateway, path: &str) -> (u16, String, String, String) {
    let r = client().get(gw.url(path)).send().unwrap();
    let status = r.status().as_u16();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (verdict, fetch) = (header("x-cache"), header("x-fetch"));
    (status, verdict, r.text().unwrap(), fetch)
}

#[test]
fn a_response_one_instance_fetched_is_a_hit_on_another_without_the_upstream() {
    let redis = Redis::start();
    let (app, calls) = origin(Duration::ZERO);
    let body = config(&redis, &app, "2s");
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    assert_eq!(
        get(&a, "/c/one"),
        (200, "MISS".into(), "body of /c/one".into())
    );
    // The write to Redis happens after the response: wait for it.
    let stored = wait_for(Duration::from_secs(5), || {
        (entries(&redis) == 1).then_some(())
    });
    assert!(stored.is_some());
    let r = client().get(b.url("/c/one")).send().unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert!(r.headers().contains_key("age"), "{:?}", r.headers());
    assert_eq!(r.text().unwrap(), "body of /c/one");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "B served it from Redis");
    // B now has it in memory too: Redis down or not, it is a hit there.
    assert_eq!(get(&b, "/c/one").1, "HIT");
}

#[test]
fn fifty_cold_requests_over_three_instances_make_one_upstream_call() {
    let redis = Redis::start();
    let (app, calls) = origin(Duration::from_millis(500));
    let body = config(&redis, &app, "2s");
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&body)).collect();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let gw = &gws[i % 3];
                s.spawn(move || {
                    let (status, _, text) = get(gw, "/c/stampede");
                    (status, text)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        answers
            .iter()
            .all(|(s, t)| *s == 200 && t == "body of /c/stampede"),
        "{answers:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one fetch for the whole fleet"
    );
}

#[test]
fn a_purge_on_one_instance_removes_the_entry_from_every_instance_and_redis() {
    let redis = Redis::start();
    let (app, calls) = origin(Duration::ZERO);
    let body = config(&redis, &app, "2s");
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&body)).collect();
    get(&gws[0], "/c/p");
    let stored = wait_for(Duration::from_secs(5), || {
        (entries(&redis) == 1).then_some(())
    });
    assert!(stored.is_some());
    assert_eq!(get(&gws[1], "/c/p").1, "HIT");
    assert_eq!(get(&gws[2], "/c/p").1, "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let r = client()
        .post(gws[1].admin_url("/cache/purge?path=/c/p"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap(),
        serde_json::json!({"purged": 1, "purged_shared": 1})
    );
    assert_eq!(
        entries(&redis),
        0,
        "the Redis entry is deleted before the answer"
    );
    // The publish empties every instance's memory within a moment.
    for (i, gw) in gws.iter().enumerate() {
        let empty = wait_for(Duration::from_secs(5), || {
            (metric(&gw.metrics(), "tollgate_cache_entries", &[]) == Some(0.0)).then_some(())
        });
        assert!(
            empty.is_some(),
            "instance {i} still holds it: {}",
            gw.metrics()
        );
    }
    // The next request fetches again, and the others get that copy, not the purged one.
    let (_, verdict, _, fetch) = get_n(&gws[2], "/c/p");
    assert_eq!((verdict.as_str(), fetch.as_str()), ("MISS", "2"));
    let stored = wait_for(Duration::from_secs(5), || {
        (entries(&redis) == 1).then_some(())
    });
    assert!(stored.is_some());
    for gw in &gws[..2] {
        let (_, verdict, _, fetch) = get_n(gw, "/c/p");
        assert_eq!((verdict.as_str(), fetch.as_str()), ("HIT", "2"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn redis_that_stops_answering_leaves_a_memory_cache_that_does_not_wait_on_it() {
    let redis = Redis::start();
    let (app, _calls) = origin(Duration::ZERO);
    // A long timeout, so a wait on Redis would show.
    let gw = Gateway::start(&config(&redis, &app, "400ms"));
    assert_eq!(get(&gw, "/c/warm").1, "MISS");
    redis.pause();
    let mut slow = 0;
    let started = Instant::now();
    for i in 0..30 {
        let t = Instant::now();
        let (status, _, text) = get(&gw, &format!("/c/cold/{i}"));
        assert_eq!(status, 200);
        assert_eq!(text, format!("body of /c/cold/{i}"));
        if t.elapsed() >= Duration::from_millis(350) {
            slow += 1;
        }
    }
    // Only the call that found Redis gone, and one per second of back-off after it, wait.
    let allowed = 1 + started.elapsed().as_secs() as usize * 2;
    assert!(
        slow <= allowed,
        "{slow} requests waited on Redis (allowed {allowed})"
    );
    assert_eq!(get(&gw, "/c/warm").1, "HIT", "memory still serves");
    assert_eq!(
        metric(&gw.metrics(), "tollgate_cache_shared_degraded", &[]),
        Some(1.0)
    );
    assert!(metric(&gw.metrics(), "tollgate_cache_shared_errors_total", &[]).unwrap() >= 1.0);
    redis.resume();
    let back = wait_for(Duration::from_secs(10), || {
        get(&gw, &format!("/c/again/{}", fastrand::u32(..)));
        (metric(&gw.metrics(), "tollgate_cache_shared_degraded", &[]) == Some(0.0)).then_some(())
    });
    assert!(back.is_some(), "{}", gw.metrics());
}

#[test]
fn an_uncacheable_answer_releases_the_fleet_lock_at_once() {
    let redis = Redis::start();
    let app = Backend::start("origin", |_| {
        Reply::status(200)
            .header("cache-control", "no-store")
            .body("private")
    });
    let body =
        config(&redis, &app, "200ms").replace("lock_timeout = \"5s\"", "lock_timeout = \"3s\"");
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    let started = Instant::now();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, verdict, text) = get(gw, "/c/private");
        assert_eq!((status, text.as_str()), (200, "private"));
        assert_ne!(verdict, "HIT");
    }
    // With the lock left to expire, each request after the first would wait lock_timeout.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "requests waited on a lock nobody would fill: {:?}",
        started.elapsed()
    );
    assert_eq!(app.hits(), 6);
}

/// Issue 35: a fill lock was released by a plain `DEL`, so a fetch that outlived
/// `lock_timeout` deleted the lock another fetch had taken since, and that fetch's waiters
/// stopped waiting and went to the upstream themselves. The lock now holds a token per fetch
/// and is deleted only while it still holds the releasing fetch's own.
#[test]
fn a_fetch_that_outlived_its_lock_deleted_the_next_fetchs_lock() {
    let redis = Redis::start();
    let slow = Backend::start("slow", |_| {
        Reply::status(200)
            .header("cache-control", "no-store")
            .body("not stored")
            .delay(Duration::from_millis(1_500))
    });
    let body =
        config(&redis, &slow, "2s").replace("lock_timeout = \"5s\"", "lock_timeout = \"300ms\"");
    let gw = Gateway::start(&body);
    let url = gw.url("/c/slow");
    let fetch = std::thread::spawn(move || client().get(url).send().unwrap().status().as_u16());
    // The gateway's fetch took the lock; once it expired, another fetch (here: the test)
    // takes it, as a second instance would.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lock = loop {
        let keys = redis.cli(&["KEYS", "*:lock"]);
        if let Some(k) = keys.lines().map(str::trim).find(|l| !l.is_empty()) {
            break k.to_string();
        }
        assert!(Instant::now() < deadline, "the fetch took no lock");
        std::thread::sleep(Duration::from_millis(10));
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["EXISTS", &lock]).trim() != "0" {
        assert!(Instant::now() < deadline, "the lock never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        redis
            .cli(&["SET", &lock, "another-fetch", "PX", "10000"])
            .trim(),
        "OK"
    );
    let releases = || redis.calls("del") + redis.calls("eval");
    let before = releases();
    assert_eq!(fetch.join().unwrap(), 200);
    // The gateway's fetch ended uncacheable and releases its lock in the background: wait
    // until the release reached Redis.
    let deadline = Instant::now() + Duration::from_secs(5);
    while releases() == before {
        assert!(
            Instant::now() < deadline,
            "the fetch never released its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        redis.cli(&["GET", &lock]).trim(),
        "another-fetch",
        "the lock another fetch holds is left alone"
    );
}

/// Issue 35: an unsafe method (here a POST) on a cached URL invalidated it only on the
/// instance that proxied it; another instance kept serving its copy. It is now announced to
/// the fleet like an admin purge.
#[test]
fn a_post_on_one_instance_left_the_cached_url_on_the_others() {
    let redis = Redis::start();
    let (app, _) = origin(Duration::ZERO);
    let body = config(&redis, &app, "2s");
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    assert_eq!(get(&a, "/c/item?v=1").1, "MISS");
    assert_eq!(get(&b, "/c/item?v=1").1, "HIT", "B copied it from Redis");
    assert_eq!(get(&b, "/c/item?v=1").1, "HIT", "and keeps it in memory");
    let posted = client()
        .post(a.url("/c/item?v=1"))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(posted.status(), 200);
    // The announcement reaches B through Redis: wait for B's copy to go.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, verdict, _) = get(&b, "/c/item?v=1");
        if verdict == "MISS" {
            break;
        }
        assert_eq!(verdict, "HIT");
        assert!(
            Instant::now() < deadline,
            "B still serves the invalidated URL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Commands the gateways sent Redis: every call in `INFO commandstats` but the test's own
/// (`INFO`, `KEYS`, `SCAN`, `PUBSUB`, `EXISTS` from redis-cli).
fn gateway_calls(redis: &Redis) -> u64 {
    let info = redis.cli(&["INFO", "commandstats"]);
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter(|l| {
            !["info", "keys", "scan", "pubsub|numsub", "pubsub"]
                .iter()
                .any(|c| l.starts_with(&format!("cmdstat_{c}:")))
        })
        .filter_map(|l| {
            l.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Wait until `n` connections subscribe to the fill channel (each instance's subscriber is up).
fn wait_subscribed(redis: &Redis, channel: &str, n: usize) {
    let up = wait_for(Duration::from_secs(10), || {
        let out = redis.cli(&["PUBSUB", "NUMSUB", channel]);
        let count = out.lines().nth(1)?.trim().parse::<usize>().ok()?;
        (count >= n).then_some(())
    });
    assert!(up.is_some(), "{n} subscribers of {channel}");
}

/// Issue 35: requests waiting for another instance's fill polled Redis every 20 ms (a `GET`
/// and an `EXISTS` per poll, for the whole fetch). They are now woken by a message on the
/// instance's one pub/sub connection, with a poll every 500 ms only in case one is lost.
#[test]
fn fill_lock_waiters_polled_redis_every_20_ms() {
    let redis = Redis::start();
    let (app, calls) = origin(Duration::from_millis(2_000));
    let body = config(&redis, &app, "2s");
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    wait_subscribed(&redis, "tollgate:cache:filled", 2);
    let url = a.url("/c/slow");
    let holder = std::thread::spawn(move || client().get(url).send().unwrap().text().unwrap());
    let locked = wait_for(Duration::from_secs(5), || {
        let keys = redis.cli(&["KEYS", "*:lock"]);
        keys.lines().any(|k| !k.trim().is_empty()).then_some(())
    });
    assert!(locked.is_some(), "A took the fill lock");
    let before = gateway_calls(&redis);
    const WAITERS: usize = 10;
    let answers: Vec<(u16, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WAITERS)
            .map(|_| s.spawn(|| get(&b, "/c/slow")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(holder.join().unwrap(), "body of /c/slow");
    let spent = gateway_calls(&redis) - before;
    for (status, verdict, text) in &answers {
        assert_eq!(
            (*status, verdict.as_str(), text.as_str()),
            (200, "HIT", "body of /c/slow")
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one fetch for both instances"
    );
    // Per waiter: a GET and the SET NX that found the lock held, then a GET and an EXISTS
    // per look: one when the message comes, one per 500 ms in case it was lost (three in a
    // 2 s fetch). Polling every 20 ms made it about 180. The fill's own commands (its
    // scripts' included, as commandstats counts them) are spread over the waiters.
    let per_waiter = spent as f64 / WAITERS as f64;
    eprintln!(
        "fill-lock waiters: {spent} Redis commands for {WAITERS} waiters ({per_waiter:.1} each)"
    );
    assert!(
        per_waiter <= 16.0,
        "{per_waiter:.1} Redis commands per waiting request"
    );
}

/// POST `/cache/purge?QUERY` on `gw`'s admin listener: status and JSON answer.
fn purge(gw: &Gateway, query: &str) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url(&format!("/cache/purge?{query}")))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

/// Issue 35: a purge reached Redis only through the instances' memory (each deleted the
/// Redis copies of what it held), so an entry evicted from every instance's memory stayed in
/// Redis and was served again after the purge. The purge now finds Redis's entries through
/// its index, and answers once Redis deleted them.
#[test]
fn a_purge_left_an_entry_evicted_from_every_instance_in_redis() {
    let redis = Redis::start();
    let big = "x".repeat(150 * 1024);
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let app = Backend::start("origin", move |r| {
        let n = f.fetch_add(1, Ordering::SeqCst) + 1;
        let body = if r.path.starts_with("/c/big") {
            big.clone()
        } else {
            format!("body of {}", r.path)
        };
        Reply::status(200)
            .header("x-fetch", &n.to_string())
            .body(body)
    });
    let body = config(&redis, &app, "2s");
    // A's memory holds less than two big bodies: the victim goes first.
    let small = body.replace(
        "max_size = \"4MiB\"",
        "max_size = \"256KiB\"\nmax_object_size = \"200KiB\"",
    );
    let (a, b) = (Gateway::start(&small), Gateway::start(&body));
    assert_eq!(get(&a, "/c/victim").1, "MISS");
    let stored = wait_for(Duration::from_secs(5), || {
        (entries(&redis) == 1).then_some(())
    });
    assert!(stored.is_some(), "the victim is in Redis");
    for i in 0..2 {
        assert_eq!(get(&a, &format!("/c/big/{i}")).0, 200);
    }
    let evicted = wait_for(Duration::from_secs(5), || {
        let m = a.metrics();
        metric(&m, "tollgate_cache_evictions_total", &[])
            .filter(|n| *n >= 1.0)
            .map(|_| ())
    });
    assert!(evicted.is_some(), "A evicted the victim: {}", a.metrics());
    // B never held it either: no instance's memory has it, Redis does.
    let (status, answer) = purge(&b, "path=/c/victim");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"purged": 0, "purged_shared": 1}),
        "the Redis entry is counted"
    );
    let (_, verdict, text, fetch) = get_n(&a, "/c/victim");
    assert_eq!(
        (verdict.as_str(), text.as_str()),
        ("MISS", "body of /c/victim"),
        "served from Redis after the purge (fetch {fetch})"
    );
    assert_ne!(fetch, "1", "a new fetch, not the purged copy");
}

/// A purge by prefix of every host, on a 3-master Redis Cluster, through an instance that
/// never held the entries: the index (one key per host, under its own hash tag) finds the
/// entries wherever their slots put them, and the other paths stay.
#[test]
fn a_prefix_purge_on_a_redis_cluster_deletes_every_entry_under_it() {
    let cluster = crate::common::redis::RedisCluster::start();
    let (app, _calls) = origin(Duration::ZERO);
    let body = format!(
        r#"
[cache]
max_size = "4MiB"
lock_timeout = "5s"
[cache.shared]
redis_cluster = [{}]
timeout = "2s"

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "cached"
path_prefix = "/c"
upstream = "app"
[routes.cache]
ttl = "60s"
"#,
        cluster
            .urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", "),
        app.addr
    );
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    let fetch = |gw: &Gateway, host: &str, path: &str| {
        let r = client()
            .get(gw.url(path))
            .header("host", host)
            .send()
            .unwrap();
        let verdict = r.headers()["x-cache"].to_str().unwrap().to_string();
        assert_eq!(r.text().unwrap(), format!("body of {path}"));
        verdict
    };
    let under: Vec<(&str, String)> = (0..6)
        .map(|i| ("a.test", format!("/c/pre/{i}")))
        .chain([("b.test", "/c/pre/x?y=1".to_string())])
        .collect();
    for (host, path) in &under {
        assert_eq!(fetch(&a, host, path), "MISS");
    }
    assert_eq!(fetch(&a, "a.test", "/c/keep"), "MISS");
    let per_node = || -> Vec<usize> {
        cluster
            .nodes
            .iter()
            .map(|n| {
                let keys = n.cli(&["--scan", "--pattern", "tollgate:cache:{*}"]);
                keys.lines().filter(|k| !k.trim().is_empty()).count()
            })
            .collect()
    };
    let stored = wait_for(Duration::from_secs(10), || {
        let counts = per_node();
        (counts.iter().sum::<usize>() == 8).then_some(counts)
    });
    let counts = stored.unwrap_or_else(|| panic!("8 entries in the cluster: {:?}", per_node()));
    assert!(
        counts.iter().filter(|n| **n > 0).count() >= 2,
        "entries spread over the masters: {counts:?}"
    );
    let (status, answer) = purge(&b, "prefix=/c/pre/");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"purged": 0, "purged_shared": 7}));
    assert_eq!(per_node().iter().sum::<usize>(), 1, "only /c/keep is left");
    assert_eq!(fetch(&b, "a.test", "/c/keep"), "HIT", "from Redis");
    assert_eq!(fetch(&b, "a.test", "/c/pre/3"), "MISS");
    // The announcement emptied A's memory of them too.
    let emptied = wait_for(Duration::from_secs(5), || {
        (metric(&a.metrics(), "tollgate_cache_entries", &[]) == Some(1.0)).then_some(())
    });
    assert!(emptied.is_some(), "{}", a.metrics());
    assert_eq!(fetch(&a, "b.test", "/c/pre/x?y=1"), "MISS");
}

/// Redis down: the purge cannot be confirmed, so it answers 503 and says so; this
/// instance's memory is purged all the same.
#[test]
fn a_purge_with_redis_down_answers_503_and_still_empties_memory() {
    let mut redis = Redis::start();
    let (app, _calls) = origin(Duration::ZERO);
    let gw = Gateway::start(&config(&redis, &app, "500ms"));
    assert_eq!(get(&gw, "/c/kept").1, "MISS");
    assert_eq!(
        metric(&gw.metrics(), "tollgate_cache_entries", &[]),
        Some(1.0)
    );
    redis.stop();
    let started = Instant::now();
    let (status, answer) = purge(&gw, "path=/c/kept");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["purged"], 1, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("Redis") && error.contains("retry"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(&gw.metrics(), "tollgate_cache_entries", &[]),
        Some(0.0)
    );
}

/// The fill message, not the 500 ms look, is what wakes a waiter. The test holds the lock
/// itself (as another instance's fetch would), so it knows when every waiter is waiting;
/// then it stores the entry, releases the lock and publishes the hash as the holder's script
/// does. Each waiter answers at once, with one look (a GET and an EXISTS) after the two
/// commands that found the lock held.
#[test]
fn fill_lock_waiters_are_woken_by_the_fill_message() {
    let redis = Redis::start();
    let (app, calls) = origin(Duration::ZERO);
    let body = config(&redis, &app, "2s");
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    wait_subscribed(&redis, "tollgate:cache:filled", 2);
    // A's fetch puts the entry in Redis; the test moves it aside and takes its lock.
    assert_eq!(get(&a, "/c/woken").1, "MISS");
    let key = wait_for(Duration::from_secs(5), || {
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:{*}"]);
        keys.lines()
            .map(str::trim)
            .find(|k| !k.is_empty())
            .map(String::from)
    })
    .expect("the entry reached Redis");
    let hash = key
        .trim_start_matches("tollgate:cache:{")
        .trim_end_matches('}')
        .to_string();
    let lock = format!("{key}:lock");
    assert_eq!(redis.cli(&["RENAME", &key, "aside"]).trim(), "OK");
    assert_eq!(
        redis.cli(&["SET", &lock, "test", "PX", "20000"]).trim(),
        "OK"
    );
    let used = |r: &Redis| r.calls("get") + r.calls("set") + r.calls("exists") + r.calls("eval");
    let (before, sets) = (used(&redis), redis.calls("set"));
    const WAITERS: u64 = 8;
    let (answers, woken_in) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WAITERS)
            .map(|_| {
                s.spawn(|| {
                    let answer = get(&b, "/c/woken");
                    (answer, Instant::now())
                })
            })
            .collect();
        // Every waiter tried the lock and found it held: fill and tell them.
        let waiting = wait_for(Duration::from_secs(10), || {
            (redis.calls("set") >= sets + WAITERS).then_some(())
        });
        assert!(waiting.is_some(), "the waiters tried the lock");
        assert_eq!(redis.cli(&["RENAME", "aside", &key]).trim(), "OK");
        assert_eq!(redis.cli(&["DEL", &lock]).trim(), "1");
        let published = Instant::now();
        redis.cli(&["PUBLISH", "tollgate:cache:filled", &hash]);
        let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let last = answers.iter().map(|(_, at)| *at).max().unwrap();
        (answers, last.saturating_duration_since(published))
    });
    for ((status, verdict, text), _) in &answers {
        assert_eq!(
            (*status, verdict.as_str(), text.as_str()),
            (200, "HIT", "body of /c/woken")
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the waiters never fetched");
    let per_waiter = (used(&redis) - before) as f64 / WAITERS as f64;
    eprintln!("woken waiters: {per_waiter:.1} Redis commands each, the last answered {woken_in:?} after the message");
    // A look every 500 ms would have answered 400-500 ms after the message.
    assert!(
        woken_in < Duration::from_millis(300),
        "woken {woken_in:?} after the message"
    );
    assert!(
        per_waiter <= 6.0,
        "{per_waiter:.1} Redis commands per waiter"
    );
}
