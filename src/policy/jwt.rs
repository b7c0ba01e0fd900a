//! JWT verification for `[auth.jwt.NAME]` providers.
//!
//! STUB: interface only; the implementation is being written. See the task description.

use crate::config::file::JwtSection;
use crate::config::Problem;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

/// Why a token was refused; `reason()` is the `auth_failures_total` label and the JSON
/// error text, and never contains token or key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    TooLarge,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl JwtError {
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed_token",
            JwtError::TooLarge => "token_too_large",
            JwtError::AlgorithmNotAllowed => "algorithm_not_allowed",
            JwtError::UnknownKey => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
        }
    }
}

/// What a verified token says about the caller.
#[derive(Debug, Clone, Default)]
pub struct VerifiedToken {
    pub subject: Option<String>,
    pub roles: Vec<String>,
    /// Headers to set upstream (subject, roles, mapped claims).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A compiled JWT provider.
pub struct JwtProvider {
    pub name: Arc<str>,
    mapped_headers: Vec<HeaderName>,
}

impl JwtProvider {
    /// Problems in a provider's section, located under `at` (e.g. `auth.jwt.main`).
    pub fn validate(_at: &str, _section: &JwtSection) -> Vec<Problem> {
        Vec::new()
    }

    /// Load keys and build the provider.
    pub fn compile(name: &str, _section: &JwtSection, _at: &str) -> Result<Self, Vec<Problem>> {
        Ok(JwtProvider {
            name: name.into(),
            mapped_headers: Vec::new(),
        })
    }

    /// Verify a bearer token (the part after `Bearer `).
    pub async fn verify(&self, _token: &str) -> Result<VerifiedToken, JwtError> {
        Err(JwtError::UnknownKey)
    }

    /// Header names this provider sets upstream; always stripped from client requests.
    pub fn mapped_headers(&self) -> &[HeaderName] {
        &self.mapped_headers
    }
}
