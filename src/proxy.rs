//! The one `ProxyHttp` implementation: it pins each request to the generation serving when
//! the request began ([`Gateway`], swapped by a reload) and hands each hook to one function
//! of `crate::gateway`, named after what it decides. A request never sees two
//! configurations; a reload never waits for requests. Hooks not written here keep Pingora's
//! defaults.

use crate::gateway::{Ctx as RequestState, Gateway};
use crate::observe::log::{within, within_sync};
use crate::reload::Current;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Every request's generation, switched by reloads.
pub(crate) struct Proxy {
    pub(crate) current: Current,
}

/// Per-request state: the generation and what the request did on it.
pub(crate) struct Ctx {
    gw: Arc<Gateway>,
    req: RequestState,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.gw.release(&self.req);
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    /// NOTE(pingora-0.9): pingora-proxy/src/proxy_trait.rs `init_downstream_modules` default.
    /// No downstream modules: Pingora's default is a disabled compression module, whose
    /// per-request context and filter calls cost CPU for nothing (routes compress
    /// themselves).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// A request refused before any hook (a malformed head, CONNECT): the gateway's JSON
    /// error, not Pingora's empty one.
    fn early_error_response(&self, status: u16) -> (pingora::http::ResponseHeader, Bytes) {
        crate::error::early_error(status, self.current.load().request_id_header)
    }

    /// The generation serving now, kept for the whole request.
    fn new_ctx(&self) -> Ctx {
        Ctx {
            gw: self.current.load_full(),
            req: RequestState::default(),
        }
    }

    /// Keep-alive, read timeout, request id, trace, gRPC deadline, client address.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.gw.begin(session, &mut ctx.req);
        Ok(())
    }

    /// Refuse, answer at the gateway, or go on to proxy: the policy chain. The chain's future
    /// (several KB, with transcoding and auth calls in it) is built in its own box by
    /// `box_in_place`, and only that box moves into the request-id scope: through
    /// `async_trait`'s `Box::pin`, or as the scope's argument, the whole future would be
    /// copied on every request (13,000 more instructions per request, all in `memcpy`).
    /// NOTE(pingora-0.9): `box_in_place` is vendored pingora-proxy's (patches/README.md).
    fn request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Ctx,
    ) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let Ctx { gw, req } = ctx;
        let id = req.request_id().clone();
        let chain = pingora::proxy::box_in_place(move || gw.admit_request(session, req));
        Box::pin(within(id, chain))
    }

    /// Whether this request may use the response cache.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.gw.cache_request(session, &mut ctx.req);
        Ok(())
    }

    /// The cache entry's key.
    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        Ok(ctx.gw.cache_key(session, &ctx.req))
    }

    /// Whether and how long the upstream's answer is stored.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(ctx.gw.cacheable(session, resp, &ctx.req))
    }

    /// Whether a stale entry may answer (revalidating, or the upstream failed).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        ctx.gw.serve_stale(&ctx.req, error)
    }

    /// Which variant of a cached entry this request reads (its `Vary` fields).
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::variance(meta, req)
    }

    /// Whether a request body chunk is within `max_body_size`, and its rewrites.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        Gateway::request_body(body, end_of_stream, &mut ctx.req)
    }

    /// Which target takes this attempt, with which timeouts.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let id = ctx.req.request_id().clone();
        within_sync(id, || ctx.gw.choose_peer(session, &mut ctx.req))
    }

    /// Whether a failed connect is retried.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        let id = ctx.req.request_id().clone();
        within_sync(id, || ctx.gw.connect_failed(session, peer, &mut ctx.req, e))
    }

    /// Whether a failed exchange is retried.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let id = ctx.req.request_id().clone();
        within_sync(id, || {
            ctx.gw
                .proxy_failed(peer, session, e, &mut ctx.req, client_reused)
        })
    }

    /// Whether the upstream's answer head is relayed, refused or retried.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw.upstream_response(session, resp, &mut ctx.req)
    }

    /// What the upstream is sent.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw.upstream_request(session, upstream, &mut ctx.req)
    }

    /// What the client's response head says.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw.response_head(session, resp, &mut ctx.req)
    }

    /// How each response body chunk is rewritten.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        Gateway::response_body(body, end_of_stream, &mut ctx.req);
        Ok(None)
    }

    /// What the upstream's trailers said (a gRPC status).
    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        Gateway::upstream_trailers(trailers, &mut ctx.req);
        Ok(())
    }

    /// Whether the trailers end the body instead (a bridged gRPC-Web call).
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        Gateway::response_trailers(trailers, &mut ctx.req)
    }

    /// What the client gets when proxying failed.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let id = ctx.req.request_id().clone();
        within(id, ctx.gw.proxy_failure(session, e, &mut ctx.req)).await
    }

    /// What the metrics, the access log and the trace say of the request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let id = ctx.req.request_id().clone();
        within_sync(id, || ctx.gw.finish(session, e, &mut ctx.req))
    }

    /// What Pingora's own lines about a request ("Fail to proxy: ...") say of it.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        format!(
            "request_id: {}, {} {}, host: {}",
            ctx.req.request_id().to_str().unwrap_or(""),
            req.method,
            req.uri.path(),
            crate::forward::host(req).unwrap_or("")
        )
    }
}
