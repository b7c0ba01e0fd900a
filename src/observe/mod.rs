//! Observability: the Prometheus registry ([`metrics`]) and the JSON access log
//! ([`access_log`]), both fed from the gateway's `logging` hook once per request, and the
//! diagnostic log ([`log`]).

pub(crate) mod access_log;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod shard;
pub(crate) mod trace;
