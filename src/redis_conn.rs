//! One Redis connection for the features that share a fleet's state (rate limits, the shared
//! cache): a single server (`redis://HOST:PORT/DB`, through redis-rs's reconnecting
//! `ConnectionManager`) or a Redis Cluster (a list of seed nodes, redis-rs's cluster
//! client, which follows `MOVED`/`ASK` and topology changes). Callers keep every key of one
//! script or pipeline under one `{hash tag}`, so the same commands work on both.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connected client of either kind; cheap to clone (both multiplex one connection per
/// node).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Kind {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// Where to connect, and the connection once made (on first use, not at start: a gateway
/// starts while Redis is down, and serves by its failure rule until Redis is up).
pub(crate) struct Client {
    kind: Kind,
    conn: tokio::sync::OnceCell<Conn>,
    timeout: std::time::Duration,
}

/// A reconnecting connection that gives up quickly: each attempt and each answer bounded
/// by `timeout`, one retry, at most half a second between attempts. With redis-rs's
/// defaults (six retries, growing delays, no timeouts) a command sent while Redis is away
/// waits on the reconnection, and went on waiting for seconds after Redis was back.
pub(crate) async fn manager(
    client: &redis::Client,
    timeout: std::time::Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(1)
        .set_max_delay(500);
    ConnectionManager::new_with_config(client.clone(), config).await
}

impl Client {
    /// A single server at `url`, or the cluster `nodes` seed, each call bounded by
    /// `timeout`; the error says what is wrong.
    pub(crate) fn new(
        url: Option<&str>,
        nodes: &[String],
        timeout: std::time::Duration,
    ) -> Result<Client, String> {
        let kind =
            match (url, nodes) {
                (Some(_), [_, ..]) => {
                    return Err(
                        "set redis_url (one server) or redis_cluster (seed nodes), not both".into(),
                    )
                }
                (None, []) => return Err("needs redis_url or redis_cluster".into()),
                (Some(url), []) => Kind::Single(redis::Client::open(url).map_err(|_| {
                    format!("invalid Redis URL {url:?}; write redis://HOST:PORT/DB")
                })?),
                (None, nodes) => Kind::Cluster(
                    redis::cluster::ClusterClientBuilder::new(
                        nodes.iter().map(String::as_str).collect::<Vec<_>>(),
                    )
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| format!("invalid Redis Cluster nodes {nodes:?}: {e}"))?,
                ),
            };
        Ok(Client {
            kind,
            conn: tokio::sync::OnceCell::new(),
            timeout,
        })
    }

    /// The connection, made on first use.
    pub(crate) async fn conn(&self) -> redis::RedisResult<Conn> {
        self.conn
            .get_or_try_init(|| async {
                Ok(match &self.kind {
                    Kind::Single(c) => Conn::Single(manager(c, self.timeout).await?),
                    Kind::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
                })
            })
            .await
            .cloned()
    }
}
