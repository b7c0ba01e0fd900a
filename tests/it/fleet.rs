//! `[rate_limit] backend = "sync"` across real gateway processes sharing a real
//! `redis-server` (and a real three-master Redis Cluster): the fleet holds the limit within
//! the documented bound, makes no Redis call per request, splits the limit by the replicas
//! it last saw while Redis is away, and pushes what it admitted meanwhile when Redis is back.
#![allow(clippy::unwrap_used)]

use crate::common::redis::{Redis, RedisCluster};
use crate::common::*;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LIMIT: u64 = 300;

/// Wait, if needed, so that the test does not straddle the edge of a one-hour window.
fn away_from_a_window_edge() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 3600 - now % 3600;
    if left < 40 {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

fn config(redis: &str) -> String {
    format!(
        r#"
[rate_limit]
backend = "sync"
{redis}
sync_interval = "100ms"
# Generous: a sync that times out on a loaded machine would switch to the outage rule.
redis_timeout = "1s"

[upstreams.app]
targets = [{{ address = "$APP" }}]

[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "app"
rate_limits = [{{ limit = {LIMIT}, window = "1h", key = "route" }}]

[[routes]]
name = "fallback"
path_prefix = "/fallback"
upstream = "app"
rate_limits = [{{ limit = {LIMIT}, window = "1h", key = "route" }}]

[[routes]]
name = "free"
path_prefix = "/"
upstream = "app"
"#
    )
}

fn fleet(redis: &str, app: &Backend) -> Vec<Gateway> {
    let body = config(redis).replace("$APP", &app.addr.to_string());
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&body)).collect();
    // Each has seen all three heartbeats.
    for gw in &gws {
        let seen = wait_for(Duration::from_secs(10), || {
            (metric(&gw.metrics(), "tollgate_rate_limit_sync_replicas", &[]) == Some(3.0))
                .then_some(())
        });
        assert!(seen.is_some(), "{}", gw.metrics());
    }
    gws
}

/// Trigger the sync task of every instance (it starts with the first limited request).
fn wake(gws: &[Gateway]) {
    for gw in gws {
        client().get(gw.url("/limited/wake")).send().unwrap();
    }
}

/// Each instance gets `n` requests to `path` from its own client thread; returns the 200s
/// per instance and the request rate each instance saw (requests per second).
fn hammer(gws: &[Gateway], path: &str, n: usize) -> Vec<(u64, f64)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = gws
            .iter()
            .map(|gw| {
                let url = gw.url(path);
                s.spawn(move || {
                    let c = client();
                    let start = Instant::now();
                    let mut ok = 0;
                    for _ in 0..n {
                        let r = c.get(&url).send().unwrap();
                        match r.status().as_u16() {
                            200 => ok += 1,
                            429 => {
                                assert_eq!(r.headers()["ratelimit-remaining"], "0");
                                assert!(r.headers().contains_key("retry-after"));
                            }
                            other => panic!("{other}"),
                        }
                    }
                    (ok, n as f64 / start.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The fleet admits at least the limit and at most N x r x (interval + slack) over it.
fn holds_the_limit(gws: &[Gateway]) {
    away_from_a_window_edge();
    let per = hammer(gws, "/limited/x", 300);
    let admitted: u64 = per.iter().map(|(ok, _)| ok).sum();
    let rate = per.iter().map(|(_, r)| *r).fold(0.0, f64::max);
    // The documented bound is N x r x t (t the interval plus a round trip). The assertion
    // allows t = 0.4 s, for syncs that run late on a loaded two-core machine; the measured
    // figure is printed. Without syncing each instance would admit the whole limit, which
    // the next assertion catches.
    let bound = (3.0 * rate * 0.4).ceil() as u64;
    eprintln!(
        "sync: admitted {admitted} of limit {LIMIT} ({per:?}); over by {}, bound {bound}",
        admitted.saturating_sub(LIMIT)
    );
    assert!(admitted >= LIMIT, "under-admitted: {admitted} ({per:?})");
    assert!(
        admitted <= LIMIT + bound,
        "over the bound: {admitted} > {LIMIT} + {bound}"
    );
    // No instance could have admitted the whole limit: each refused on the fleet's count.
    assert!(per.iter().all(|(ok, _)| *ok < LIMIT), "{per:?}");
    // After a sync every instance refuses, with the fleet-wide state in its headers.
    std::thread::sleep(Duration::from_millis(300));
    for gw in gws {
        let r = client().get(gw.url("/limited/y")).send().unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["ratelimit-limit"], LIMIT.to_string().as_str());
    }
}

#[test]
fn three_instances_hold_one_limit_and_split_it_while_redis_is_away() {
    let mut redis = Redis::start();
    let app = Backend::echo("app");
    let gws = fleet(&format!("redis_url = \"{}\"", redis.url()), &app);
    wake(&gws);
    holds_the_limit(&gws);

    // Redis goes away: each instance admits limit / 3 from its own counts.
    redis.stop();
    wake(&gws);
    for gw in &gws {
        let degraded = wait_for(Duration::from_secs(10), || {
            (metric(&gw.metrics(), "tollgate_rate_limit_sync_degraded", &[]) == Some(1.0))
                .then_some(())
        });
        assert!(degraded.is_some(), "{}", gw.metrics());
    }
    let per = hammer(&gws, "/fallback/x", 150);
    for (ok, _) in &per {
        assert_eq!(*ok, LIMIT / 3, "{per:?}");
    }
    let logged: usize = gws
        .iter()
        .map(|g| g.stderr().matches("rate limit sync: Redis failed").count())
        .sum();
    assert_eq!(logged, 3, "once per instance");

    // Redis is back (empty): syncing resumes and what was admitted meanwhile is pushed.
    redis.restart();
    for gw in &gws {
        let back = wait_for(Duration::from_secs(10), || {
            (metric(&gw.metrics(), "tollgate_rate_limit_sync_degraded", &[]) == Some(0.0))
                .then_some(())
        });
        assert!(back.is_some(), "{}", gw.stderr());
        assert!(
            metric(
                &gw.metrics(),
                "tollgate_rate_limit_sync_failures_total",
                &[]
            )
            .unwrap()
                >= 1.0
        );
    }
    let total = wait_for(Duration::from_secs(5), || {
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:{rl:fallback}:*"]);
        let sum: u64 = keys
            .lines()
            .filter(|k| !k.is_empty())
            .filter_map(|k| redis.cli(&["GET", k]).trim().parse::<u64>().ok())
            .sum();
        (sum == LIMIT).then_some(sum)
    });
    assert_eq!(total, Some(LIMIT), "the fallback admissions reached Redis");
}

#[test]
fn sync_mode_makes_no_redis_call_per_request() {
    let redis = Redis::start();
    let app = Backend::echo("app");
    let gws = fleet(&format!("redis_url = \"{}\"", redis.url()), &app);
    wake(&gws);
    std::thread::sleep(Duration::from_millis(300));
    let before = redis.all_calls();
    let started = Instant::now();
    let per = hammer(&gws, "/limited/z", 400);
    let elapsed = started.elapsed();
    let calls = redis.all_calls() - before;
    let requests = 3 * 400;
    // Each instance syncs every 100 ms: an INCRBY and a PEXPIRE per active window, and four
    // heartbeat commands, whatever the number of requests.
    let syncs = 3.0 * (elapsed.as_secs_f64() / 0.1 + 2.0);
    eprintln!(
        "sync: {calls} Redis commands for {requests} requests in {elapsed:?} ({per:?}), {:.3} per request",
        calls as f64 / requests as f64
    );
    assert!(
        (calls as f64) <= syncs * 7.0,
        "{calls} commands, {syncs} syncs"
    );
    // Fewer commands than requests even when a loaded machine slows the requests down (the
    // count follows the syncs, that is the time, not the requests).
    assert!(calls < requests, "{calls} commands for {requests} requests");
    assert_eq!(redis.calls("evalsha") + redis.calls("eval"), 0);
}

#[test]
fn a_redis_cluster_of_three_masters_holds_the_limit_and_outlives_a_master_going_away() {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let app = Backend::echo("app");
    let gws = fleet(&format!("redis_cluster = [{}]", nodes.join(", ")), &app);
    wake(&gws);
    holds_the_limit(&gws);
    for gw in &gws {
        let m = gw.metrics();
        assert_eq!(
            metric(&m, "tollgate_rate_limit_sync_failures_total", &[]),
            Some(0.0),
            "{m}"
        );
    }
    assert!(cluster.calls("incrby") > 0);

    // One master goes away: its slots are uncovered, the cluster refuses, every instance
    // falls back to limit / 3; the master comes back and syncing resumes.
    let mut cluster = cluster;
    cluster.nodes[0].stop();
    wake(&gws);
    for gw in &gws {
        let degraded = wait_for(Duration::from_secs(20), || {
            (metric(&gw.metrics(), "tollgate_rate_limit_sync_degraded", &[]) == Some(1.0))
                .then_some(())
        });
        assert!(degraded.is_some(), "{}", gw.stderr());
    }
    let per = hammer(&gws, "/fallback/x", 150);
    for (ok, _) in &per {
        assert_eq!(*ok, LIMIT / 3, "{per:?}");
    }
    cluster.nodes[0].restart();
    cluster.wait_ok();
    for gw in &gws {
        let back = wait_for(Duration::from_secs(30), || {
            (metric(&gw.metrics(), "tollgate_rate_limit_sync_degraded", &[]) == Some(0.0))
                .then_some(())
        });
        assert!(back.is_some(), "{}", gw.stderr());
    }
    let total = wait_for(Duration::from_secs(10), || {
        let sum: u64 = cluster
            .nodes
            .iter()
            .flat_map(|n| {
                let keys = n.cli(&["--scan", "--pattern", "tollgate:{rl:fallback}:*"]);
                keys.lines()
                    .filter(|k| !k.is_empty())
                    .filter_map(|k| n.cli(&["GET", k]).trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum();
        (sum == LIMIT).then_some(sum)
    });
    assert_eq!(
        total,
        Some(LIMIT),
        "the fallback admissions reached the cluster"
    );
}

#[test]
fn sync_settings_are_checked() {
    let (code, out) = check_config(&format!("{PREAMBLE}\n[rate_limit]\nbackend = \"sync\"\n"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rate_limit.redis_url"), "{out}");
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[rate_limit]\nbackend = \"sync\"\nredis_url = \"redis://127.0.0.1:1/0\"\nredis_cluster = [\"redis://127.0.0.1:2\"]\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not both"), "{out}");
}

#[test]
fn sync_counts_carry_over_a_reload_and_every_window_of_a_route_counts() {
    away_from_a_window_edge();
    let redis = Redis::start();
    let app = Backend::echo("app");
    let body = |extra: &str| {
        format!(
            r#"
[rate_limit]
backend = "sync"
redis_url = "{}"
sync_interval = "50ms"

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "two"
path_prefix = "/two"
upstream = "app"
rate_limits = [
  {{ limit = 30, window = "1h", key = "route" }},
  {{ limit = 1000, window = "1h", key = "ip" }},
]
{extra}
"#,
            redis.url(),
            app.addr
        )
    };
    let gw = Gateway::start(&body(""));
    let c = client();
    let remaining = |r: &reqwest::blocking::Response| {
        r.headers()["ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    for i in 0..20 {
        let r = c.get(gw.url("/two/x")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(remaining(&r), 30 - (i + 1), "the tightest window speaks");
    }
    gw.rewrite_config(&body(
        "[[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nupstream = \"app\"\n",
    ));
    let (status, answer) = gw.reload();
    assert_eq!(status, 200, "{answer}");
    let admitted = (0..20)
        .filter(|_| c.get(gw.url("/two/x")).send().unwrap().status() == 200)
        .count();
    assert_eq!(admitted, 10, "the window kept its 20 across the reload");
    // Both windows were counted in Redis: the route's at 30, the IP's at 30 too (refusals
    // are not counted in any window).
    let pushed = wait_for(Duration::from_secs(5), || {
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:{rl:two}:*"]);
        let mut counts: Vec<u64> = keys
            .lines()
            .filter(|k| !k.is_empty())
            .filter_map(|k| redis.cli(&["GET", k]).trim().parse().ok())
            .collect();
        counts.sort_unstable();
        (counts == [30, 30]).then_some(counts)
    });
    assert!(pushed.is_some());
}
