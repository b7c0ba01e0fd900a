//! The gateway's own responses: JSON errors carrying the request id, fixed direct responses
//! (`[routes.respond]`, `[upstreams.NAME.fallback]`), and the mapping from Pingora errors to
//! the status a client sees. Nothing here echoes
//! secrets or internals; messages are fixed strings chosen by the caller.

use crate::config::file::RespondSection;
use crate::config::FromConfig;
use crate::config::Problem;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;

/// `X-Request-ID`, and a request's id with its header: defined in [`crate::forward`] with the
/// functions that read and make request ids (this module only writes them), so the two
/// import one way; kept at this path.
pub(crate) use crate::forward::RequestId;

/// A fixed response served without an upstream.
#[derive(Debug)]
pub(crate) struct DirectResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl FromConfig for DirectResponse {
    type Section = RespondSection;

    /// `[routes.respond]` or `[upstreams.NAME.fallback]`, problems under `at`.
    fn from_config(
        at: &str,
        r: &RespondSection,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<DirectResponse> {
        let RespondSection {
            status,
            headers,
            body,
        } = r;
        let before = problems.len();
        crate::config::bounds::RESPOND_STATUS.check(&format!("{at}.status"), *status, problems);
        let headers = header_pairs(&format!("{at}.headers"), headers, problems);
        let status = StatusCode::from_u16(*status).ok();
        match status {
            Some(status) if problems.len() == before => Some(DirectResponse {
                status,
                headers,
                body: Bytes::from(body.clone()),
            }),
            _ => None,
        }
    }
}

use crate::config::types::header_pairs;

/// A response the gateway answers itself instead of proxying.
#[derive(Debug, Clone)]
pub(crate) struct Reject {
    pub status: StatusCode,
    pub message: &'static str,
    /// Why, in the reason vocabulary (`docs/observability.md`): the access log's `reason`,
    /// the JSON body's `reason`, `tollgate_refusals_total{reason}`, the span's
    /// `tollgate.reason`.
    pub reason: Cow<'static, str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A body to send instead of the JSON error (an auth service's own denial, where the
    /// configuration passes it on), with its content type among `headers`.
    pub body: Option<Bytes>,
}

impl Reject {
    /// A refusal whose reason is its message's ([`reason_of`]).
    pub(crate) fn new(status: StatusCode, message: &'static str) -> Self {
        Reject {
            status,
            message,
            reason: reason_of(message),
            headers: Vec::new(),
            body: None,
        }
    }

    /// The same refusal with a reason more precise than its message's.
    pub(crate) fn because(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = reason.into();
        self
    }
}

/// The reason word of a fixed message: the message itself when it is one already
/// (`token_expired`), else its words in lower case joined by `_` (`request body too large`
/// is `request_body_too_large`, `path must start with /` is `path_must_start_with`).
pub(crate) fn reason_of(message: &str) -> Cow<'_, str> {
    if message
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Cow::Borrowed(message);
    }
    let words: Vec<String> = message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    Cow::Owned(words.join("_"))
}

/// `{"error": message, "reason": reason, "request_id": id}`.
pub(crate) fn json_body(message: &str, reason: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({ "error": message, "reason": reason, "request_id": request_id });
    Bytes::from(body.to_string())
}

/// The head of a response the gateway writes itself: `headers`, the request id and, but on a
/// 1xx or 204 (RFC 9110 §8.6: a CORS preflight's answer), the body's length.
fn head(
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    body_len: usize,
    request_id: &RequestId,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 3))?;
    for (name, value) in headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(request_id.header, request_id.value.clone())?;
    if !(status.is_informational() || status == StatusCode::NO_CONTENT) {
        resp.insert_header(http::header::CONTENT_LENGTH, body_len)?;
    }
    Ok(resp)
}

/// Write a complete response and end it.
pub(crate) async fn respond(
    session: &mut Session,
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
    request_id: &RequestId,
) -> Result<()> {
    let resp = head(status, headers, body.len(), request_id)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The body of a refusal (its own, or the JSON error) with the headers that go with it
/// added to `headers`: `Content-Type` for the JSON error, `Cache-Control: no-store`.
fn error_body(
    reject: &Reject,
    request_id: &RequestId,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
) -> Bytes {
    let body = match &reject.body {
        Some(b) => b.clone(),
        None => {
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
            json_body(reject.message, &reject.reason, request_id.as_str())
        }
    };
    headers.push((
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ));
    body
}

/// Write the gateway's error response: JSON, or on a gRPC request a trailers-only gRPC
/// status (HTTP 200), which is what a gRPC client reads.
pub(crate) async fn respond_error(
    session: &mut Session,
    reject: &Reject,
    request_id: &RequestId,
) -> Result<()> {
    let mut headers = reject.headers.clone();
    if let Some(flavor) = crate::grpc::Flavor::of(session.req_header()) {
        let code = crate::grpc::Code::for_gateway_status(reject.status);
        headers.extend(crate::grpc::status_headers(flavor, code, reject.message));
        return respond(session, StatusCode::OK, &headers, Bytes::new(), request_id).await;
    }
    let body = error_body(reject, request_id, &mut headers);
    respond(session, reject.status, &headers, body, request_id).await
}

/// The response to a request Pingora refuses before any hook runs (400 for a head its
/// parser refuses, 405 for CONNECT): the gateway's JSON error with a fresh request id, like
/// every other error it answers. Pingora's own is empty, says `Server: Pingora`, and could
/// only be told from an upstream's identical answer by guessing from its bytes.
pub(crate) fn early_error(
    status: u16,
    header: &'static pingora::http::SpelledName,
) -> (ResponseHeader, Bytes) {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let reject = Reject::new(status, message_for(status.as_u16()));
    let request_id = RequestId {
        header,
        value: crate::forward::new_request_id(),
    };
    let mut headers = Vec::with_capacity(2);
    let body = error_body(&reject, &request_id, &mut headers);
    match head(status, &headers, body.len(), &request_id) {
        Ok(resp) => (resp, body),
        // Only a status outside 100..=999 fails to build, which `status` is not.
        Err(_) => (
            pingora::protocols::http::ServerSession::generate_error(status.as_u16()),
            Bytes::new(),
        ),
    }
}

/// The status and message a client gets for a proxy failure; `None` when the client is gone.
pub(crate) fn classify(e: &Error) -> Option<(StatusCode, &'static str)> {
    use ErrorType::*;
    let status = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    match e.etype() {
        // The gateway's own errors carry the message a client should read.
        CustomCode(message, code) => Some((status(*code), *message)),
        HTTPStatus(code) => Some((status(*code), message_for(*code))),
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ConnectTimedout | ReadTimedout | WriteTimedout => {
                    Some((StatusCode::GATEWAY_TIMEOUT, "upstream timed out"))
                }
                ConnectionClosed => {
                    Some((StatusCode::BAD_GATEWAY, "upstream closed the connection"))
                }
                _ => Some((StatusCode::BAD_GATEWAY, "upstream unavailable")),
            },
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => None,
                ReadTimedout => Some((StatusCode::REQUEST_TIMEOUT, "request timed out")),
                _ => Some((StatusCode::BAD_REQUEST, "bad request")),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                Some((StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
            }
        },
    }
}

fn message_for(code: u16) -> &'static str {
    match code {
        400 => "bad request",
        404 => "no route",
        408 => "request timed out",
        405 => "method not allowed",
        413 => "request body too large",
        431 => "request header too large",
        502 => "upstream unavailable",
        503 => "no healthy upstream target",
        504 => "upstream timed out",
        _ => "request failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let up = |t| {
            let mut e = Error::new(t);
            e.as_up();
            e
        };
        let cases = [
            (up(ErrorType::ConnectTimedout), Some(504)),
            (up(ErrorType::ReadTimedout), Some(504)),
            (up(ErrorType::ConnectRefused), Some(502)),
            (Error::new(ErrorType::HTTPStatus(503)), Some(503)),
            (
                Error::new(ErrorType::new_code("no final answer", 504)),
                Some(504),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(classify(&e).map(|(s, _)| s.as_u16()), want, "{e}");
        }
    }

    #[test]
    fn reasons_are_words_joined_by_underscores() {
        for (message, reason) in [
            ("token_expired", "token_expired"),
            ("request body too large", "request_body_too_large"),
            ("path must start with /", "path_must_start_with"),
            (
                "both Content-Length and Transfer-Encoding",
                "both_content_length_and_transfer_encoding",
            ),
            (
                "Transfer-Encoding in an HTTP/1.0 request",
                "transfer_encoding_in_an_http_1_0_request",
            ),
        ] {
            assert_eq!(reason_of(message), reason);
        }
    }

    #[test]
    fn body_is_json_with_request_id() {
        let v: serde_json::Value =
            serde_json::from_slice(&json_body("no route", "no_route", "abc")).unwrap();
        assert_eq!(v["error"], "no route");
        assert_eq!(v["reason"], "no_route");
        assert_eq!(v["request_id"], "abc");
    }
}
