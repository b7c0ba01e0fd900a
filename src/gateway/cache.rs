//! The response cache's hooks: whether a request may use the cache, its key, whether an
//! answer is stored, stale entries, and what the cache did as a response header.

use super::{Ctx, Gateway};
use crate::cache::{self, Lookup, Verdict};
use crate::forward;
use http::HeaderName;
use pingora::cache::{CacheKey, NoCacheReason, RespCacheable};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

impl Gateway {
    /// Turn the cache on for a caching route, unless the request must bypass it.
    pub(crate) fn cache_request(&self, session: &mut Session, ctx: &mut Ctx) {
        let Some(cache) = &self.cache else {
            return;
        };
        let Some(rc) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return;
        };
        let req = session.req_header();
        let authenticated =
            ctx.identity.is_some() || req.headers.contains_key(http::header::AUTHORIZATION);
        let principal = ctx.identity.as_ref().and_then(|i| i.principal());
        match rc.lookup(&req.method, authenticated, principal) {
            Lookup::Use(consumer) => {
                ctx.cache.consumer = consumer;
                cache.enable(session);
            }
            Lookup::Bypass(why) => ctx.reply.reason = Some(Cow::Borrowed(why)),
        }
    }

    /// The entry's key: route, method, host, path and query, and the consumer of a
    /// per-consumer entry.
    pub(crate) fn cache_key(&self, session: &Session, ctx: &Ctx) -> CacheKey {
        let req = session.req_header();
        cache::key(
            ctx.route_name(),
            req,
            forward::host(req),
            ctx.cache.consumer.as_deref(),
        )
    }

    /// Stale entries: inside `stale-while-revalidate` (Pingora asks with no error only
    /// within an entry's window; one request refreshes it in the background), and on an
    /// upstream failure within `stale-if-error`.
    pub(crate) fn serve_stale(&self, ctx: &Ctx, error: Option<&Error>) -> bool {
        match error {
            None => ctx.route.as_ref().is_some_and(|r| r.cache.is_some()),
            Some(e) => e.esource() == &pingora::ErrorSource::Upstream,
        }
    }

    /// Whether and how long the upstream's answer is stored.
    pub(crate) fn cacheable(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &Ctx,
    ) -> RespCacheable {
        let rc = ctx.route.as_ref().and_then(|r| r.cache.as_ref());
        match (rc, &self.cache) {
            (Some(rc), Some(cache)) => {
                // Entries keyed per consumer are not shared; `shared` ones are (RFC 9111 §3.5).
                let shared_authorized =
                    cache::shared_authorized(ctx.cache.consumer.as_deref(), session.req_header());
                rc.response_meta(
                    resp,
                    cache.max_object(),
                    shared_authorized,
                    cache.targeted(),
                )
            }
            _ => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        }
    }

    /// On a caching route's response head: drop the fields meant for this cache, invalidate
    /// what an unsafe method changed, and say what the cache did (`X-Cache`).
    pub(super) fn cache_response_head(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        if ctx.route.as_ref().is_none_or(|r| r.cache.is_none()) {
            return Ok(());
        }
        // Targeted cache-control fields are for this cache, not the client (RFC 9213).
        for name in cache.targeted() {
            resp.remove_header(name);
        }
        let req = session.req_header();
        let dropped = cache.invalidate_after(req, forward::host(req), resp);
        if dropped > 0 {
            log::debug!(
                "{} {}: {dropped} cache entries invalidated",
                req.method,
                req.uri
            );
        }
        ctx.cache.verdict = Verdict::of(session.cache.phase());
        if let Some(v) = ctx.cache.verdict {
            resp.insert_header(X_CACHE, v.header())?;
        }
        Ok(())
    }

    /// At the end of the request: the bypass reason, and the cache's own bookkeeping.
    pub(super) fn cache_finish(&self, session: &mut Session, ctx: &mut Ctx) {
        if ctx.reply.reason.is_none() && ctx.cache.verdict == Some(Verdict::Bypass) {
            ctx.reply.reason = Some(Cow::Owned(cache::bypass_reason(session.cache.phase())));
        }
        if let Some(cache) = &self.cache {
            cache.finish(session);
        }
    }
}
