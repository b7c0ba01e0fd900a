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
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:*"]);
        keys.lines()
            .any(|k| !k.ends_with(":lock") && !k.is_empty())
            .then_some(())
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
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:*"]);
        (keys.lines().filter(|k| !k.is_empty()).count() == 1).then_some(())
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
    let gone = wait_for(Duration::from_secs(5), || {
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:*"]);
        keys.lines().all(|k| k.is_empty()).then_some(())
    });
    assert!(gone.is_some(), "the Redis entry is deleted");
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
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:*"]);
        keys.lines()
            .any(|k| !k.is_empty() && !k.ends_with(":lock"))
            .then_some(())
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
