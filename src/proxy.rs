//! The `ProxyHttp` Pingora runs: it pins each request to the generation serving when the
//! request began ([`Gateway`], swapped by a reload) and hands every hook to it. A request
//! never sees two configurations; a reload never waits for requests.

use crate::gateway::{Ctx as RequestState, Gateway};
use crate::observe::log::{within, within_sync};
use crate::reload::Current;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// Every request's generation, switched by reloads.
pub(crate) struct Proxy {
    pub(crate) current: Current,
}

/// Per-request state: the generation and what the request did on it.
pub struct Ctx {
    gw: Arc<Gateway>,
    req: RequestState,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        self.current.load().init_downstream_modules(modules)
    }

    /// A request refused before any hook (a malformed head, CONNECT): the gateway's JSON
    /// error, not Pingora's empty one.
    fn early_error_response(&self, status: u16) -> (pingora::http::ResponseHeader, Bytes) {
        crate::error::early_error(status)
    }

    fn new_ctx(&self) -> Ctx {
        let gw = self.current.load_full();
        let req = gw.new_ctx();
        Ctx { gw, req }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.gw.early_request_filter(session, &mut ctx.req).await
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let id = ctx.req.request_id().clone();
        within(id, ctx.gw.request_filter(session, &mut ctx.req)).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.gw.request_cache_filter(session, &mut ctx.req)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        ctx.gw.cache_key_callback(session, &mut ctx.req)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        ctx.gw.response_cache_filter(session, resp, &mut ctx.req)
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        ctx.gw.should_serve_stale(session, &mut ctx.req, error)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        ctx.gw.cache_vary_filter(meta, &mut ctx.req, req)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw
            .request_body_filter(session, body, end_of_stream, &mut ctx.req)
            .await
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let id = ctx.req.request_id().clone();
        within(id, ctx.gw.upstream_peer(session, &mut ctx.req)).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        let id = ctx.req.request_id().clone();
        within_sync(id, || {
            ctx.gw.fail_to_connect(session, peer, &mut ctx.req, e)
        })
    }

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
                .error_while_proxy(peer, session, e, &mut ctx.req, client_reused)
        })
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw
            .upstream_response_filter(session, resp, &mut ctx.req)
            .await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw
            .upstream_request_filter(session, upstream, &mut ctx.req)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw.response_filter(session, resp, &mut ctx.req).await
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        ctx.gw
            .response_body_filter(session, body, end_of_stream, &mut ctx.req)
    }

    fn upstream_response_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.gw
            .upstream_response_trailer_filter(session, trailers, &mut ctx.req)
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        ctx.gw
            .response_trailer_filter(session, trailers, &mut ctx.req)
            .await
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let id = ctx.req.request_id().clone();
        within(id, ctx.gw.fail_to_proxy(session, e, &mut ctx.req)).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let id = ctx.req.request_id().clone();
        within(id, ctx.gw.logging(session, e, &mut ctx.req)).await
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
