//! Authentication: who is calling. Called from `request_filter` (through
//! [`crate::gateway::admit`]) once the route is known; never does I/O.
//!
//! A route lists authenticators in `authn` ("any of"). Exactly one credential may be presented:
//! none → 401 `credentials_missing`; credentials for two authenticators, or the same credential
//! twice (two headers, header and query) → 401 `ambiguous_credentials` — never "first wins".
//! The authenticator whose credential is present decides; an invalid credential is never
//! retried against another authenticator.
//!
//! The result is a [`Principal`]; `forward` turns it into `X-Portcullis-*` headers after
//! removing every client-sent header with that prefix (the identity propagation contract).

pub mod api_key;
pub mod time;

use std::sync::Arc;
use thiserror::Error;

/// How the caller was authenticated. Part of the identity contract (`X-Portcullis-Auth-Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
        }
    }
}

/// A verified identity. One type for every authenticator, used by identity headers and (with
/// later issues) authorization, rate-limit keys and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub method: AuthMethod,
    /// Name of the authenticator that verified the credential.
    pub authenticator: Arc<str>,
    pub subject: Arc<str>,
    pub consumer: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub scopes: Arc<[String]>,
    pub groups: Arc<[String]>,
    /// Unix seconds after which the credential is no longer valid.
    pub expires_at: Option<u64>,
}

/// Why authentication failed. Every variant answers 401; `code()` is the stable reason.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    #[error("credentials are required")]
    CredentialsMissing,
    #[error("more than one credential was presented")]
    AmbiguousCredentials,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("the API key has expired")]
    KeyExpired,
    #[error("the API key is disabled")]
    KeyDisabled,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::CredentialsMissing => "credentials_missing",
            AuthError::AmbiguousCredentials => "ambiguous_credentials",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::KeyExpired => "key_expired",
            AuthError::KeyDisabled => "key_disabled",
        }
    }
}

/// A compiled authenticator.
#[derive(Debug)]
pub enum Authenticator {
    ApiKey(api_key::ApiKeyAuth),
}

impl Authenticator {
    pub fn name(&self) -> &Arc<str> {
        match self {
            Authenticator::ApiKey(a) => &a.name,
        }
    }

    /// `WWW-Authenticate` challenge for a 401 from this authenticator.
    pub fn challenge(&self) -> &'static str {
        match self {
            Authenticator::ApiKey(_) => "ApiKey realm=\"portcullis\"",
        }
    }
}

/// The request facts authenticators look at.
pub struct Credentials<'a> {
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
}

/// Outcome of [`authenticate`]: the principal, or the error and which authenticator's
/// challenge to send.
pub type AuthOutcome = Result<Principal, (AuthError, &'static str)>;

/// Authenticate against the route's authenticators ("any of"). `now` is Unix seconds.
pub fn authenticate(
    authn: &[Arc<Authenticator>],
    creds: &Credentials<'_>,
    now: u64,
) -> AuthOutcome {
    let default_challenge = authn
        .first()
        .map_or("ApiKey realm=\"portcullis\"", |a| a.challenge());
    let mut found = None;
    for a in authn {
        let present = match a.as_ref() {
            Authenticator::ApiKey(k) => k.extract(creds),
        };
        match present {
            Ok(None) => {}
            Ok(Some(cred)) => {
                if found.is_some() {
                    crate::metrics::auth_attempt(
                        "none",
                        Some(AuthError::AmbiguousCredentials.code()),
                    );
                    return Err((AuthError::AmbiguousCredentials, default_challenge));
                }
                found = Some((a, cred));
            }
            Err(e) => {
                crate::metrics::auth_attempt(a.name(), Some(e.code()));
                return Err((e, a.challenge()));
            }
        }
    }
    let Some((a, cred)) = found else {
        crate::metrics::auth_attempt("none", Some(AuthError::CredentialsMissing.code()));
        return Err((AuthError::CredentialsMissing, default_challenge));
    };
    let result = match a.as_ref() {
        Authenticator::ApiKey(k) => k.verify(cred, now),
    };
    crate::metrics::auth_attempt(a.name(), result.as_ref().err().map(|e| e.code()));
    result.map_err(|e| (e, a.challenge()))
}

/// Remove every credential the route's authenticators read from what goes upstream: their
/// headers (done by `forward`) and their query parameters (returned here).
pub fn strip_query_credentials(authn: &[Arc<Authenticator>], query: &str) -> Option<String> {
    let names: Vec<&str> = authn
        .iter()
        .filter_map(|a| match a.as_ref() {
            Authenticator::ApiKey(k) => k.query.as_deref(),
        })
        .collect();
    if names.is_empty() {
        return Some(query.to_string());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !names.contains(&name)
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("&"))
    }
}
