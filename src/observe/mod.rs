//! Observability: the Prometheus registry ([`metrics`]) and the JSON access log
//! ([`access_log`]). Both are fed from the gateway's `logging` hook, once per request.

pub mod access_log;
pub mod metrics;
