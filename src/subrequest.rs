//! One request the gateway itself sends to an upstream group (aggregate parts, forward
//! authentication, token introspection): the group's target selection, health, breaker and
//! TLS apply, over Pingora's pooled HTTP connector, and the answer is read whole up to a cap.

use crate::upstream::breaker::Outcome;
use crate::upstream::UpstreamGroup;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use std::time::Duration;

/// How long an idle pooled connection to a target is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Send `req` (and `body`) to a target of `group`, within `timeout`; the response head and a
/// body of at most `max_body` bytes. The target's breaker hears the outcome.
pub(crate) async fn call(
    group: &UpstreamGroup,
    connector: &Connector,
    req: RequestHeader,
    body: Option<Bytes>,
    max_body: usize,
    timeout: Duration,
) -> Result<(ResponseHeader, Bytes), String> {
    let mut target = group
        .select(&[], &[])
        .ok_or_else(|| "no healthy target".to_string())?;
    let peer = group.peer(target.target().addr);
    let outcome = match tokio::time::timeout(
        timeout,
        exchange(connector, &peer, req, body, max_body),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}ms", timeout.as_millis())),
    };
    match &outcome {
        Ok((head, _)) => target.record_status(head.status.as_u16()),
        Err(_) => target.record(Outcome::Failure),
    }
    outcome
}

async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<Bytes>,
    max_body: usize,
) -> Result<(ResponseHeader, Bytes), String> {
    let text = |e: Box<Error>| e.etype().as_str().to_string();
    let (mut session, _reused) = connector.get_http_session(peer).await.map_err(text)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(text)?;
    if let Some(b) = body {
        session.write_request_body(b, true).await.map_err(text)?;
    }
    session.finish_request_body().await.map_err(text)?;
    session.read_response_header().await.map_err(text)?;
    let head = session
        .response_header()
        .cloned()
        .ok_or_else(|| "no response header".to_string())?;
    let mut out = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await.map_err(text)? {
        out.extend_from_slice(&chunk);
        if out.len() > max_body {
            return Err("answer too large".to_string());
        }
    }
    connector
        .release_http_session(session, peer, Some(POOL_IDLE))
        .await;
    Ok((head, out.freeze()))
}
