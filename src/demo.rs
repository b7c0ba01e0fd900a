//! Built-in demo backends (`[[demo]]`), so the example configuration proxies, balances and
//! health-checks real upstreams on a fresh machine with nothing else running. Each answers
//! `GET /healthz` with 200 and anything else with a JSON echo of what it received.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

pub(crate) struct DemoBackend {
    pub name: String,
}

#[async_trait]
impl ServeHttp for DemoBackend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let body = if req.uri.path() == "/healthz" {
            json!({ "status": "ok", "backend": self.name })
        } else {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                .collect();
            json!({
                "backend": self.name,
                "method": req.method.as_str(),
                "uri": req.uri.to_string(),
                "headers": headers,
            })
        };
        // Consume any request body so the connection can be reused.
        let _ = session.drain_request_body().await;
        let mut resp = Response::new(body.to_string().into_bytes());
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}
