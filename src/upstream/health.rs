//! Active health checks, built on Pingora's `HttpHealthCheck` and `TcpHealthCheck` with
//! rise/fall thresholds (Pingora flips on a single result by default; we default to HAProxy's
//! rise 2 / fall 3 so targets do not flap). They run as the generation's background work
//! (Pingora's `HealthCheckService` over the group's health registry).

use crate::config::file::{HealthCheckKind, HealthCheckSection};
use crate::config::{bounds, Problem};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::prelude::*;
use std::time::Duration;

/// A compiled `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone)]
pub struct HealthCheckSpec {
    pub kind: Kind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: usize,
    pub fall: usize,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Tcp,
    Http {
        path: String,
        host: String,
        expected_status: u16,
    },
}

impl HealthCheckSpec {
    /// `[upstreams.NAME.health_check]`, checked and built in one pass.
    pub(crate) fn from_config(
        at: &str,
        hc: &HealthCheckSection,
        problems: &mut Vec<Problem>,
    ) -> Option<HealthCheckSpec> {
        let HealthCheckSection {
            kind,
            path,
            host,
            expected_status,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
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
        let kind = match kind {
            HealthCheckKind::Tcp => Kind::Tcp,
            HealthCheckKind::Http => {
                if !path.starts_with('/') {
                    problems.push(Problem::new(format!("{at}.path"), "must start with '/'"));
                }
                bounds::HEALTH_EXPECTED_STATUS.check(
                    &format!("{at}.expected_status"),
                    *expected_status,
                    problems,
                );
                if http::HeaderValue::from_str(host).is_err() {
                    problems.push(Problem::new(
                        format!("{at}.host"),
                        "is not a valid Host header value",
                    ));
                }
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
        })
    }

    /// The Pingora health check this spec describes; HTTP checks use the group's TLS.
    pub(crate) fn build(
        &self,
        tls: Option<&super::UpstreamTls>,
    ) -> Result<Box<dyn HealthCheck + Send + Sync>> {
        match &self.kind {
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
