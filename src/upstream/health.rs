//! Active health checks, built on Pingora's `HttpHealthCheck` and `TcpHealthCheck` with
//! rise/fall thresholds (Pingora flips on a single result by default; we default to HAProxy's
//! rise 2 / fall 3 so targets do not flap). They run as the generation's background work
//! (Pingora's `HealthCheckService` over the group's health registry).

use crate::config::file::{HealthCheckKind, HealthCheckSection, NewTargets};
use crate::config::FromConfig;
use crate::config::{bounds, Problem};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::prelude::*;
use std::time::Duration;

/// A compiled `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone)]
pub(crate) struct HealthCheckSpec {
    pub kind: Kind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: usize,
    pub fall: usize,
    /// Targets serve only once a check of theirs passed.
    pub check_first: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Tcp,
    Grpc {
        service: String,
        host: String,
    },
    Http {
        path: String,
        host: String,
        expected_status: u16,
    },
}

impl FromConfig for HealthCheckSpec {
    type Section = HealthCheckSection;

    /// `[upstreams.NAME.health_check]`, checked and built in one pass.
    fn from_config(
        at: &str,
        hc: &HealthCheckSection,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<HealthCheckSpec> {
        let HealthCheckSection {
            kind,
            path,
            host,
            expected_status,
            service,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            new_targets,
        } = hc;
        let before = problems.len();
        bounds::HEALTH_INTERVAL.check(&format!("{at}.interval"), *interval, problems);
        bounds::HEALTH_TIMEOUT.check(&format!("{at}.timeout"), *timeout, problems);
        bounds::HEALTH_THRESHOLD.check(
            &format!("{at}.healthy_threshold"),
            *healthy_threshold,
            problems,
        );
        bounds::HEALTH_THRESHOLD.check(
            &format!("{at}.unhealthy_threshold"),
            *unhealthy_threshold,
            problems,
        );
        if *kind != HealthCheckKind::Tcp && http::HeaderValue::from_str(host).is_err() {
            problems.push(Problem::new(
                format!("{at}.host"),
                "is not a valid Host header value",
            ));
        }
        let kind = match kind {
            HealthCheckKind::Tcp => Kind::Tcp,
            HealthCheckKind::Grpc => Kind::Grpc {
                service: service.clone(),
                host: host.clone(),
            },
            HealthCheckKind::Http => {
                if !path.starts_with('/') {
                    problems.push(Problem::new(format!("{at}.path"), "must start with '/'"));
                }
                bounds::HEALTH_EXPECTED_STATUS.check(
                    &format!("{at}.expected_status"),
                    *expected_status,
                    problems,
                );
                Kind::Http {
                    path: path.clone(),
                    host: host.clone(),
                    expected_status: *expected_status,
                }
            }
        };
        (problems.len() == before).then_some(HealthCheckSpec {
            kind,
            interval: interval.0,
            timeout: timeout.0,
            rise: *healthy_threshold,
            fall: *unhealthy_threshold,
            check_first: *new_targets == NewTargets::AfterCheck,
        })
    }
}

impl HealthCheckSpec {
    /// The Pingora health check this spec describes; HTTP checks use the group's TLS.
    pub(crate) fn build(
        &self,
        group: &str,
        tls: Option<&super::UpstreamTls>,
    ) -> Result<Box<dyn HealthCheck + Send + Sync>> {
        Ok(Box::new(Noting {
            check: self.build_check(tls)?,
            group: group.into(),
        }))
    }

    fn build_check(
        &self,
        tls: Option<&super::UpstreamTls>,
    ) -> Result<Box<dyn HealthCheck + Send + Sync>> {
        match &self.kind {
            Kind::Grpc { service, host } => {
                Ok(Box::new(GrpcHealthCheck::new(self, service, host, tls)?))
            }
            Kind::Tcp => {
                let mut hc = TcpHealthCheck::new();
                hc.consecutive_success = self.rise;
                hc.consecutive_failure = self.fall;
                hc.peer_template.options.connection_timeout = Some(self.timeout);
                hc.peer_template.options.total_connection_timeout = Some(self.timeout);
                Ok(hc)
            }
            Kind::Http {
                path,
                host,
                expected_status,
            } => {
                let mut hc = HttpHealthCheck::new(host, tls.is_some());
                if let Some(tls) = tls {
                    if !tls.sni.is_empty() {
                        hc.peer_template.sni = tls.sni.clone();
                    }
                    tls.configure(&mut hc.peer_template, false);
                }
                hc.consecutive_success = self.rise;
                hc.consecutive_failure = self.fall;
                let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
                req.insert_header("Host", host.as_str())?;
                req.insert_header(
                    "User-Agent",
                    concat!("tollgate-health/", env!("CARGO_PKG_VERSION")),
                )?;
                hc.req = req;
                let opts = &mut hc.peer_template.options;
                opts.connection_timeout = Some(self.timeout);
                opts.total_connection_timeout = Some(self.timeout);
                opts.read_timeout = Some(self.timeout);
                opts.write_timeout = Some(self.timeout);
                let expected = *expected_status;
                hc.validator = Some(Box::new(move |resp: &ResponseHeader| {
                    if resp.status.as_u16() == expected {
                        Ok(())
                    } else {
                        Error::e_explain(
                            ErrorType::CustomCode(
                                "unexpected health check status",
                                resp.status.as_u16(),
                            ),
                            format!("expected {expected}"),
                        )
                    }
                }));
                Ok(Box::new(hc))
            }
        }
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` 1 is `SERVING`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

/// The standard gRPC health check: `grpc.health.v1.Health/Check` over HTTP/2, healthy when
/// the answer is `SERVING` (any other status, a gRPC error or no answer is a failure).
struct GrpcHealthCheck {
    connector: pingora::connectors::http::Connector,
    peer_template: HttpPeer,
    req: RequestHeader,
    body: bytes::Bytes,
    timeout: Duration,
    rise: usize,
    fall: usize,
}

impl GrpcHealthCheck {
    fn new(
        spec: &HealthCheckSpec,
        service: &str,
        host: &str,
        tls: Option<&super::UpstreamTls>,
    ) -> Result<Self> {
        let sni = tls.map_or_else(String::new, |t| t.sni.clone());
        let mut peer = HttpPeer::new("0.0.0.0:1", tls.is_some(), sni);
        match tls {
            Some(tls) => {
                tls.configure(&mut peer, true);
                peer.options.alpn = pingora::protocols::ALPN::H2;
            }
            None => peer.options.set_http_version(2, 2),
        }
        let o = &mut peer.options;
        o.connection_timeout = Some(spec.timeout);
        o.total_connection_timeout = Some(spec.timeout);
        o.read_timeout = Some(spec.timeout);
        o.write_timeout = Some(spec.timeout);
        let msg = prost::Message::encode_to_vec(&HealthCheckRequest {
            service: service.to_string(),
        });
        let mut req = RequestHeader::build("POST", b"/grpc.health.v1.Health/Check", None)?;
        req.insert_header("host", host)?;
        req.insert_header("content-type", "application/grpc")?;
        req.insert_header("te", "trailers")?;
        req.insert_header(
            "user-agent",
            concat!("tollgate-health/", env!("CARGO_PKG_VERSION")),
        )?;
        Ok(GrpcHealthCheck {
            connector: pingora::connectors::http::Connector::new(None),
            peer_template: peer,
            req,
            body: crate::grpc::frame(&msg),
            timeout: spec.timeout,
            rise: spec.rise,
            fall: spec.fall,
        })
    }

    async fn ask(&self, peer: &HttpPeer) -> Result<i32> {
        use pingora::protocols::http::client::HttpSession;
        let fail = |why: String| Error::explain(ErrorType::CustomCode("grpc health check", 0), why);
        let (session, _) = self.connector.get_http_session(peer).await?;
        let HttpSession::H2(mut h2) = session else {
            return Err(fail("the target did not speak HTTP/2".into()));
        };
        h2.write_request_header(Box::new(self.req.clone()), false)?;
        h2.write_request_body(self.body.clone(), true).await?;
        h2.read_response_header().await?;
        let head = h2
            .response_header()
            .cloned()
            .ok_or_else(|| fail("no response header".into()))?;
        if head.status != http::StatusCode::OK {
            return Err(fail(format!("HTTP status {}", head.status)));
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = h2.read_response_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > 4096 {
                return Err(fail("answer too large".into()));
            }
        }
        let trailers = h2.read_trailers().await?;
        let status = trailers
            .as_ref()
            .and_then(crate::grpc::status_of)
            .or_else(|| crate::grpc::status_of(&head.headers));
        if status != Some(crate::grpc::Code::Ok) {
            return Err(fail(format!("gRPC status {status:?}")));
        }
        let msg = crate::grpc::unframe(&body).ok_or_else(|| fail("malformed answer".into()))?;
        let resp: HealthCheckResponse =
            prost::Message::decode(msg).map_err(|e| fail(format!("malformed answer: {e}")))?;
        Ok(resp.status)
    }
}

#[async_trait::async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &pingora::lb::Backend) -> Result<()> {
        let mut peer = self.peer_template.clone();
        peer._address = target.addr.clone();
        let status = tokio::time::timeout(self.timeout, self.ask(&peer))
            .await
            .map_err(|_| Error::explain(ErrorType::ReadTimedout, "grpc health check"))??;
        if status == SERVING {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::CustomCode("grpc health check", 0),
                format!("status {status}, not SERVING"),
            )
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.rise
        } else {
            self.fall
        }
    }
}

// NOTE(pingora-0.9): pingora-load-balancing/src/health_check.rs (`Health::default`): a new
// target starts healthy until a check fails ("TODO: allow to start with unhealthy"); to serve
// a target only after a check passed, the pass is noted on its `TargetState` here.
/// A health check that notes on each target when one of its checks passed
/// (`new_targets = "after_check"` serves only those).
struct Noting {
    check: Box<dyn HealthCheck + Send + Sync>,
    /// The group's name, for the log lines Pingora writes when a target flips.
    group: Box<str>,
}

#[async_trait::async_trait]
impl HealthCheck for Noting {
    async fn check(&self, target: &pingora::lb::Backend) -> Result<()> {
        let outcome = self.check.check(target).await;
        if outcome.is_ok() {
            if let Some(state) = target.ext.get::<std::sync::Arc<super::TargetState>>() {
                state.note_check_passed();
            }
        }
        outcome
    }

    async fn health_status_change(&self, target: &pingora::lb::Backend, healthy: bool) {
        self.check.health_status_change(target, healthy).await
    }

    /// `upstream NAME/ADDRESS`, not the `Backend` debug dump Pingora prints by default.
    fn backend_summary(&self, target: &pingora::lb::Backend) -> String {
        format!("upstream {}/{}", self.group, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.check.health_threshold(success)
    }
}
