//! One HTTP/3 request stream as a Pingora downstream session
//! (`pingora_core::protocols::http::custom::server::Session`), so the proxy runs every hook,
//! route, policy, cache, transform, limit, log line and metric on it as on HTTP/1 and
//! HTTP/2. Upstreams stay HTTP/1.1 or HTTP/2: Pingora writes the upstream request from the
//! request head this session hands it.

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::Stream;
use h3::server::RequestStream;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::body_buffer::FixedBuffer;
use pingora::protocols::http::custom::server::Session;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::HttpTask;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType, OrErr, Result};
use std::sync::Arc;
use std::time::Duration;

/// The request stream's type: quinn's bidirectional stream, carrying `Bytes`.
pub(crate) type Stream3 = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// What every request of one connection shares.
pub(crate) struct Connection {
    pub quic: quinn::Connection,
    pub digest: Digest,
    pub local: SocketAddr,
}

/// The replay buffer Pingora's retries (and request validation) read the body back from:
/// Pingora's own size for HTTP/1 and HTTP/2.
const RETRY_BUFFER: usize = 64 * 1024;

/// One request stream.
pub(crate) struct H3Session {
    req: RequestHeader,
    stream: Stream3,
    conn: Arc<Connection>,
    /// The client's address when the request arrived (a migrating client changes it).
    client: SocketAddr,
    /// The client ended its request body (or never had one).
    request_done: bool,
    /// Body read ahead when the session began, handed out first.
    pending: Option<Bytes>,
    /// The response is complete (or the stream was given up).
    ended: bool,
    response: Option<Box<ResponseHeader>>,
    retry: Option<FixedBuffer>,
    body_read: usize,
    body_sent: usize,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
}

/// Hop-by-hop headers HTTP/3 forbids (RFC 9114 section 4.2).
const CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

impl H3Session {
    /// The request head Pingora gets for an HTTP/3 request: version 3, `Host` from
    /// `:authority` when the client sent none, `Early-Data: 1` when it came in 0-RTT data
    /// (RFC 8470). `Err`: malformed (RFC 9114 section 4.3.1: `Host` and `:authority`
    /// disagree).
    pub(crate) fn head(req: http::Request<()>, early: bool) -> Result<RequestHeader> {
        let (parts, ()) = req.into_parts();
        let mut req = RequestHeader::from(parts);
        req.set_version(Version::HTTP_3);
        if let Some(authority) = req.uri.authority() {
            let authority = authority.as_str();
            match req.headers.get(header::HOST) {
                Some(host) if !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "HTTP/3 Host and :authority disagree",
                    );
                }
                Some(_) => {}
                // HTTP/1.1 upstreams need `Host`.
                None => {
                    let host = HeaderValue::from_str(authority)
                        .or_err(ErrorType::InvalidHTTPHeader, "HTTP/3 :authority")?;
                    req.insert_header(header::HOST, host)?;
                }
            }
        }
        if early {
            req.insert_header("early-data", "1")?;
        }
        Ok(req)
    }

    /// The session of a request whose head (made by [`H3Session::head`]) arrived on
    /// `stream`.
    pub(crate) fn new(req: RequestHeader, stream: Stream3, conn: Arc<Connection>) -> H3Session {
        let request_done = req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        let mut session = H3Session {
            client: SocketAddr::Inet(conn.quic.remote_address()),
            req,
            stream,
            conn,
            request_done,
            pending: None,
            ended: false,
            response: None,
            retry: None,
            body_read: 0,
            body_sent: 0,
            read_timeout: None,
            write_timeout: None,
            drain_timeout: None,
        };
        session.read_ahead();
        session
    }

    /// Whatever of the body has already arrived with the head, without waiting: a request
    /// whose stream ended with its head (a GET, usually in the same packet) is known to
    /// have no body, so an HTTP/1.1 upstream gets no `Transfer-Encoding: chunked` for it.
    fn read_ahead(&mut self) {
        if self.request_done {
            return;
        }
        match futures::FutureExt::now_or_never(self.stream.recv_data()) {
            Some(Ok(None)) => self.request_done = true,
            Some(Ok(Some(mut chunk))) => {
                self.pending = Some(chunk.copy_to_bytes(chunk.remaining()));
            }
            // An error is met again by the first read; `None`: nothing yet.
            Some(Err(_)) | None => {}
        }
    }

    async fn recv(&mut self) -> Result<Option<Bytes>> {
        if let Some(data) = self.pending.take() {
            self.count(&data);
            return Ok(Some(data));
        }
        if self.request_done {
            return Ok(None);
        }
        let read = self.stream.recv_data();
        let data = match self.read_timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .or_err(ErrorType::ReadTimedout, "reading the HTTP/3 request body")?,
            None => read.await,
        }
        .or_err(ErrorType::ReadError, "reading the HTTP/3 request body")?;
        match data {
            Some(mut chunk) => {
                let data = chunk.copy_to_bytes(chunk.remaining());
                self.count(&data);
                Ok(Some(data))
            }
            None => {
                self.request_done = true;
                Ok(None)
            }
        }
    }

    fn count(&mut self, data: &Bytes) {
        self.body_read += data.len();
        if let Some(buffer) = self.retry.as_mut() {
            buffer.write_to_buffer(data);
        }
    }

    async fn send_head(&mut self, mut resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.ended || self.response.is_some() {
            return Ok(());
        }
        if resp.status.is_informational() {
            // The h3 crate sends one response head per stream.
            return Ok(());
        }
        for name in &CONNECTION_SPECIFIC {
            resp.remove_header(name);
        }
        if !resp.headers.contains_key(header::DATE) {
            resp.insert_header(
                header::DATE,
                pingora::protocols::http::date::get_cached_date(),
            )?;
        }
        let head = http::Response::from_parts(resp.as_owned_parts(), ());
        self.with_write_timeout(|s| s.stream.send_response(head))
            .await?;
        self.response = Some(resp);
        if end {
            self.end().await?;
        }
        Ok(())
    }

    async fn send_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if self.response.is_none() {
            return Error::e_explain(ErrorType::WriteError, "HTTP/3 body before its head");
        }
        if !data.is_empty() {
            let len = data.len();
            self.with_write_timeout(|s| s.stream.send_data(data))
                .await?;
            self.body_sent += len;
        }
        if end {
            self.end().await?;
        }
        Ok(())
    }

    async fn end(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.stream
            .finish()
            .await
            .or_err(ErrorType::WriteError, "finishing the HTTP/3 response")
    }

    async fn with_write_timeout<'a, F, Fut>(&'a mut self, write: F) -> Result<()>
    where
        F: FnOnce(&'a mut Self) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), h3::error::StreamError>> + 'a,
    {
        let t = self.write_timeout;
        let written = match t {
            Some(t) => tokio::time::timeout(t, write(self))
                .await
                .or_err(ErrorType::WriteTimedout, "writing the HTTP/3 response")?,
            None => write(self).await,
        };
        written.or_err(ErrorType::WriteError, "writing the HTTP/3 response")
    }
}

#[async_trait]
impl Session for H3Session {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        self.recv().await
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        let limit = self.drain_timeout;
        let drain = async {
            while self.recv().await?.is_some() {}
            Ok(())
        };
        match limit {
            Some(t) => tokio::time::timeout(t, drain)
                .await
                .or_err(ErrorType::ReadTimedout, "draining the HTTP/3 request body")?,
            None => drain.await,
        }
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.send_head(resp, end).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.send_head(Box::new(resp.clone()), end).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.send_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.stream
            .send_trailers(trailers)
            .await
            .or_err(ErrorType::WriteError, "writing HTTP/3 trailers")?;
        self.end().await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut end_stream = false;
        for task in tasks {
            let end = match task {
                HttpTask::Header(head, end) => {
                    self.send_head(head, end).await?;
                    end
                }
                HttpTask::Body(data, end) => {
                    self.send_body(data.unwrap_or_default(), end).await?;
                    end
                }
                HttpTask::UpgradedBody(..) => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "an upgraded body on an HTTP/3 stream",
                    )
                }
                HttpTask::Trailer(Some(trailers)) => {
                    self.write_trailers(*trailers).await?;
                    true
                }
                HttpTask::Trailer(None) | HttpTask::Done => true,
                HttpTask::Failed(e) => return Err(e),
            };
            end_stream = end_stream || end;
        }
        if end_stream {
            self.end().await?;
        }
        Ok(end_stream)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.drain_timeout = timeout;
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    fn request_summary(&self) -> String {
        format!(
            "{} {}, Host: {}",
            self.req.method,
            self.req.uri.path_and_query().map_or("", |p| p.as_str()),
            self.req.uri.authority().map_or("", |a| a.as_str()),
        )
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.response.as_deref()
    }

    /// Give the stream up: the client sees it reset (H3_INTERNAL_ERROR), never a
    /// complete response.
    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        if !self.ended {
            self.ended = true;
            self.stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
        }
    }

    fn is_body_done(&mut self) -> bool {
        self.request_done && self.pending.is_none()
    }

    async fn finish(&mut self) -> Result<()> {
        if self.response.is_some() {
            self.end().await?;
        }
        Ok(())
    }

    fn is_body_empty(&mut self) -> bool {
        self.body_read == 0 && self.pending.is_none() && self.request_done
    }

    /// The rest of the body, or (none expected, or all read) wait until the connection
    /// closes: Pingora cancels the upstream side when the client goes away.
    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.is_body_done() {
            let reason = self.conn.quic.closed().await;
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                format!("HTTP/3 client went away: {reason}"),
            );
        }
        self.recv().await
    }

    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    fn body_bytes_read(&self) -> usize {
        self.body_read
    }

    fn digest(&self) -> Option<&Digest> {
        Some(&self.conn.digest)
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        None
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        Some(&self.client)
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        Some(&self.conn.local)
    }

    /// The head as HTTP/1.1 would carry it (Pingora's subrequests, e.g. cache locks).
    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        let mut req = self.req.clone();
        req.set_version(Version::HTTP_11);
        pingora::protocols::http::v1::client::http_req_header_to_wire(&req)
            .map(|b| b.freeze())
            .unwrap_or_default()
    }

    fn enable_retry_buffering(&mut self) {
        if self.retry.is_none() {
            self.retry = Some(FixedBuffer::new(RETRY_BUFFER));
        }
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.retry.as_ref().is_some_and(|b| b.is_truncated())
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        self.retry
            .as_ref()
            .filter(|b| !b.is_truncated())
            .and_then(|b| b.get_buffer())
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>> {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>,
    ) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Methods that may be sent in 0-RTT data (RFC 8470 section 3: replay-safe).
pub(crate) fn safe_early(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}
