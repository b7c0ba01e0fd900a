//! When a failed upstream attempt is tried again on another target: the route's `retry_on`
//! list says which failures qualify, the method and the request body say whether a retry is
//! safe. Budgets and counting are left to the caller; this module is pure and knows nothing
//! about hooks or sockets.
//!
//! A pooled connection that the upstream had already closed is not a failure of the target:
//! NOTE(pingora-0.9): pingora-proxy/src/lib.rs retries by `Error::retry`, up to `max_retries`.
//! Pingora retries those by its own rule, whatever `retry_on` says.

use crate::config::file::RetryCondition;
use pingora::{Error, ErrorType};

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection (refused, unreachable, connect or TLS handshake timed out): the request
    /// never left the gateway.
    Connect,
    /// Connected, but the upstream did not answer within the read or write timeout.
    Timeout,
    /// Connected, but the upstream closed or reset the connection before answering.
    Reset,
    /// The upstream answered with a 5xx status.
    Status5xx,
    /// A gRPC upstream answered `UNAVAILABLE` before any message: it did not take the call.
    Unavailable,
    /// Anything else (a malformed or refused response): never retried.
    Other,
}

impl Failure {
    /// How the access log names a retry made after this failure.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Status5xx => "5xx",
            Failure::Unavailable => "unavailable",
            Failure::Other => "other",
        }
    }

    /// The failure an error after connecting stands for.
    pub(crate) fn of(e: &Error) -> Failure {
        use ErrorType::*;
        match e.etype() {
            ReadTimedout | WriteTimedout => Failure::Timeout,
            ConnectionClosed | ReadError | WriteError | H2Error => Failure::Reset,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError
            | TLSHandshakeFailure | TLSHandshakeTimedout => Failure::Connect,
            _ => Failure::Other,
        }
    }
}

/// The failures a route retries: a small set of [`Failure`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryOn(u8);

impl RetryOn {
    pub(crate) const NONE: RetryOn = RetryOn(0);
    /// What a gRPC call is retried on: only failures that prove it was not processed.
    pub(crate) const GRPC: RetryOn = RetryOn(1 | 16);
    /// Only what never reached an upstream (the default `retry_on`).
    #[cfg(test)]
    const CONNECT: RetryOn = RetryOn(1);

    fn bit(f: Failure) -> u8 {
        match f {
            Failure::Connect => 1,
            Failure::Timeout => 2,
            Failure::Reset => 4,
            Failure::Status5xx => 8,
            Failure::Unavailable => 16,
            Failure::Other => 0,
        }
    }

    /// The set a route's `retry_on` lists.
    pub(crate) fn of(list: &[RetryCondition]) -> RetryOn {
        let mut on = RetryOn::NONE;
        for c in list {
            on.0 |= Self::bit(match c {
                RetryCondition::Connect => Failure::Connect,
                RetryCondition::Timeout => Failure::Timeout,
                RetryCondition::Reset => Failure::Reset,
                RetryCondition::Status5xx => Failure::Status5xx,
            });
        }
        on
    }

    /// The listed failures, as `retry_on` spells them (`tollgate explain`).
    pub(crate) fn describe(self) -> String {
        let names: Vec<&str> = [
            (Failure::Connect, "connect"),
            (Failure::Timeout, "timeout"),
            (Failure::Reset, "reset"),
            (Failure::Status5xx, "5xx"),
        ]
        .iter()
        .filter(|(f, _)| self.covers(*f))
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }

    pub(crate) fn covers(self, f: Failure) -> bool {
        self.0 & Self::bit(f) != 0
    }
}

/// What is known about the request when an attempt failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    /// GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
    pub idempotent: bool,
    /// The route retries non-idempotent requests that never left the gateway.
    pub retry_unsent: bool,
    /// The request body outgrew the retry buffer, so it cannot be sent again.
    pub body_truncated: bool,
}

/// Whether to try another target, and if not, why not (for the logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Retry,
    /// The route does not retry this failure.
    NotListed,
    /// The request may have had effects upstream and its method is not idempotent.
    NotIdempotent,
    /// The body can no longer be replayed.
    BodyTooLarge,
}

/// The rule: a listed failure is retried when sending the request again is safe. A request
/// that never left the gateway is safe for idempotent methods and, with `retry_unsent`, for
/// any; one that reached an upstream only for idempotent methods with a replayable body.
pub(crate) fn decide(on: RetryOn, failure: Failure, attempt: Attempt) -> Decision {
    if !on.covers(failure) {
        return Decision::NotListed;
    }
    if failure == Failure::Connect {
        return if attempt.idempotent || attempt.retry_unsent {
            Decision::Retry
        } else {
            Decision::NotIdempotent
        };
    }
    if !attempt.idempotent {
        return Decision::NotIdempotent;
    }
    if attempt.body_truncated {
        return Decision::BodyTooLarge;
    }
    Decision::Retry
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Attempt = Attempt {
        idempotent: true,
        retry_unsent: false,
        body_truncated: false,
    };
    const POST: Attempt = Attempt {
        idempotent: false,
        ..GET
    };

    #[test]
    fn decision_table() {
        use RetryCondition as C;
        let all = RetryOn::of(&[C::Connect, C::Timeout, C::Reset, C::Status5xx]);
        let unsent_post = Attempt {
            retry_unsent: true,
            ..POST
        };
        let big_get = Attempt {
            body_truncated: true,
            ..GET
        };
        use Decision::*;
        use Failure::*;
        let cases = [
            (RetryOn::CONNECT, Connect, GET, Retry),
            (RetryOn::CONNECT, Timeout, GET, NotListed),
            (RetryOn::CONNECT, Reset, GET, NotListed),
            (RetryOn::CONNECT, Status5xx, GET, NotListed),
            (RetryOn::CONNECT, Connect, POST, NotIdempotent),
            (RetryOn::CONNECT, Connect, unsent_post, Retry),
            (RetryOn::NONE, Connect, GET, NotListed),
            (all, Timeout, GET, Retry),
            (all, Reset, GET, Retry),
            (all, Status5xx, GET, Retry),
            (all, Timeout, POST, NotIdempotent),
            (all, Timeout, unsent_post, NotIdempotent),
            (all, Reset, big_get, BodyTooLarge),
            (all, Other, GET, NotListed),
        ];
        for (on, failure, attempt, want) in cases {
            assert_eq!(
                decide(on, failure, attempt),
                want,
                "{on:?} {failure:?} {attempt:?}"
            );
        }
    }

    #[test]
    fn errors_map_to_failures() {
        let cases = [
            (ErrorType::ReadTimedout, Failure::Timeout),
            (ErrorType::ConnectionClosed, Failure::Reset),
            (ErrorType::ConnectRefused, Failure::Connect),
            (ErrorType::InvalidHTTPHeader, Failure::Other),
        ];
        for (t, want) in cases {
            assert_eq!(Failure::of(&Error::new(t)), want);
        }
    }
}
