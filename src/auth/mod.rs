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
pub mod jwks;
pub mod jwt;
pub mod mtls;
pub mod time;

use std::sync::Arc;
use thiserror::Error;

/// How the caller was authenticated. Part of the identity contract (`X-Portcullis-Auth-Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Mtls,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Mtls => "mtls",
        }
    }
}

/// A claim path and the values the credential carries for it (see `Principal::policy_claims`).
pub type PolicyClaim = (Arc<str>, Box<[String]>);

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
    /// Token issuer (`iss`), for JWTs.
    pub issuer: Option<Arc<str>>,
    pub scopes: Arc<[String]>,
    pub roles: Arc<[String]>,
    pub groups: Arc<[String]>,
    /// Selected claims (`forward_claims`), as (name, value).
    pub claims: Arc<[(String, String)]>,
    /// Values of the claims that authorization policies test (`claims:` conditions), as
    /// (dot path, values). Only the paths some policy names are extracted, so the cached
    /// principal stays small.
    pub policy_claims: Arc<[PolicyClaim]>,
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
    #[error("the token is malformed")]
    MalformedToken,
    #[error("the token is too large")]
    TokenTooLarge,
    #[error("the token's algorithm is not allowed")]
    AlgNotAllowed,
    #[error("the token's signing key is not known")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is not valid yet")]
    TokenNotYetValid,
    #[error("the token's issuer is not accepted")]
    BadIssuer,
    #[error("the token's audience is not accepted")]
    BadAudience,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the keys to verify the token are not available yet")]
    KeysUnavailable,
    #[error("the client certificate does not carry the configured identity")]
    CertificateIdentityMissing,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::CredentialsMissing => "credentials_missing",
            AuthError::AmbiguousCredentials => "ambiguous_credentials",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::KeyExpired => "key_expired",
            AuthError::KeyDisabled => "key_disabled",
            AuthError::MalformedToken => "malformed_token",
            AuthError::TokenTooLarge => "token_too_large",
            AuthError::AlgNotAllowed => "alg_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::MissingClaim => "missing_claim",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::CertificateIdentityMissing => "certificate_identity_missing",
        }
    }
}

/// A compiled authenticator.
#[derive(Debug)]
pub enum Authenticator {
    ApiKey(Box<api_key::ApiKeyAuth>),
    Jwt(Box<jwt::JwtAuth>),
    Mtls(mtls::MtlsAuth),
}

const APIKEY_CHALLENGE: &str = "ApiKey realm=\"portcullis\"";
const BEARER_CHALLENGE: &str = "Bearer realm=\"portcullis\"";
const BEARER_INVALID: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\"";
/// There is no HTTP scheme for client certificates; name what is expected.
const MTLS_CHALLENGE: &str = "ClientCertificate realm=\"portcullis\"";

impl Authenticator {
    /// The method this authenticator's principals carry.
    pub fn method(&self) -> AuthMethod {
        match self {
            Authenticator::ApiKey(_) => AuthMethod::ApiKey,
            Authenticator::Jwt(_) => AuthMethod::Jwt,
            Authenticator::Mtls(_) => AuthMethod::Mtls,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        match self {
            Authenticator::ApiKey(a) => &a.name,
            Authenticator::Jwt(a) => &a.name,
            Authenticator::Mtls(a) => &a.name,
        }
    }

    /// `WWW-Authenticate` for a 401 from this authenticator (RFC 6750 §3 for bearer tokens:
    /// no `error` attribute when no credential was presented).
    pub fn challenge(&self, e: AuthError) -> &'static str {
        match (self, e) {
            (Authenticator::ApiKey(_), _) => APIKEY_CHALLENGE,
            (Authenticator::Jwt(_), AuthError::CredentialsMissing) => BEARER_CHALLENGE,
            (Authenticator::Jwt(_), _) => BEARER_INVALID,
            (Authenticator::Mtls(_), _) => MTLS_CHALLENGE,
        }
    }
}

/// The request facts authenticators look at.
pub struct Credentials<'a> {
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    /// The verified client certificate of the connection, if any.
    pub client_cert: Option<&'a mtls::ClientCert>,
}

/// Outcome of [`authenticate`]: the principal, or the error and the challenge to send.
pub type AuthOutcome = Result<Principal, (AuthError, &'static str)>;

/// The bearer token from `Authorization` (scheme case-insensitive). Two `Authorization`
/// headers are ambiguous; another scheme is "no bearer token".
pub fn bearer(headers: &http::HeaderMap) -> Result<Option<&[u8]>, AuthError> {
    let mut it = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = it.next() else { return Ok(None) };
    if it.next().is_some() {
        return Err(AuthError::AmbiguousCredentials);
    }
    let v = v.as_bytes();
    if v.eq_ignore_ascii_case(b"bearer") {
        // `Bearer ` with nothing after it (parsers trim the trailing space).
        return Err(AuthError::MalformedToken);
    }
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return Ok(None);
    }
    let token = v[7..].trim_ascii();
    if token.is_empty() {
        return Err(AuthError::MalformedToken);
    }
    Ok(Some(token))
}

/// The JWT from `Authorization: Bearer` or the cookies/headers the JWT authenticators name.
/// Found in more than one place → ambiguous.
fn jwt_token<'a>(
    jwts: &[&jwt::JwtAuth],
    creds: &Credentials<'a>,
) -> Result<Option<&'a [u8]>, AuthError> {
    let mut token = bearer(creds.headers)?;
    let mut take = |t: &'a [u8]| {
        if token.is_some_and(|prev| prev.as_ptr() != t.as_ptr()) {
            return Err(AuthError::AmbiguousCredentials);
        }
        token = Some(t);
        Ok(())
    };
    for j in jwts {
        if let Some(h) = &j.header {
            let mut it = creds.headers.get_all(h).iter();
            if let Some(v) = it.next() {
                if it.next().is_some() {
                    return Err(AuthError::AmbiguousCredentials);
                }
                take(v.as_bytes())?;
            }
        }
        if let Some(name) = &j.cookie {
            let mut seen = None;
            for v in creds.headers.get_all(http::header::COOKIE) {
                for pair in v.as_bytes().split(|&b| b == b';') {
                    let pair = pair.trim_ascii();
                    if let Some(val) = pair
                        .strip_prefix(name.as_bytes())
                        .and_then(|r| r.strip_prefix(b"="))
                    {
                        if seen.is_some() {
                            return Err(AuthError::AmbiguousCredentials);
                        }
                        seen = Some(val);
                    }
                }
            }
            if let Some(v) = seen {
                take(v)?;
            }
        }
    }
    Ok(token)
}

enum Found<'a> {
    ApiKey(&'a api_key::ApiKeyAuth, &'a [u8]),
    Bearer(&'a [u8]),
    Cert(&'a mtls::MtlsAuth, &'a mtls::ClientCert),
}

fn fail(a: Option<&Authenticator>, e: AuthError) -> (AuthError, &'static str) {
    crate::metrics::auth_attempt(a.map_or("none", |a| a.name()), Some(e.code()));
    let challenge = a.map_or(APIKEY_CHALLENGE, |a| a.challenge(e));
    (e, challenge)
}

/// Authenticate against the route's authenticators ("any of"). `now` is Unix seconds.
pub async fn authenticate<'a>(
    authn: &'a [Arc<Authenticator>],
    creds: &Credentials<'a>,
    now: u64,
) -> AuthOutcome {
    let first = authn.first().map(|a| a.as_ref());
    let mut found: Option<Found<'a>> = None;
    let mut jwts: Vec<&'a jwt::JwtAuth> = Vec::new();
    for a in authn {
        match a.as_ref() {
            Authenticator::ApiKey(k) => match k.extract(creds) {
                Ok(None) => {}
                Ok(Some(key)) => {
                    if found.is_some() {
                        return Err(fail(None, AuthError::AmbiguousCredentials));
                    }
                    found = Some(Found::ApiKey(k, key));
                }
                Err(e) => return Err(fail(Some(a), e)),
            },
            Authenticator::Jwt(j) => jwts.push(j),
            Authenticator::Mtls(m) => {
                if let Some(cert) = creds.client_cert {
                    if found.is_some() {
                        return Err(fail(None, AuthError::AmbiguousCredentials));
                    }
                    found = Some(Found::Cert(m, cert));
                }
            }
        }
    }
    if !jwts.is_empty() {
        let jwt_auth = authn
            .iter()
            .find(|a| matches!(a.as_ref(), Authenticator::Jwt(_)));
        match jwt_token(&jwts, creds) {
            Ok(None) => {}
            Ok(Some(t)) => {
                if found.is_some() {
                    return Err(fail(None, AuthError::AmbiguousCredentials));
                }
                found = Some(Found::Bearer(t));
            }
            Err(e) => return Err(fail(jwt_auth.map(|a| a.as_ref()), e)),
        }
    }
    let Some(found) = found else {
        return Err(fail(None, AuthError::CredentialsMissing))
            .map_err(|(e, _)| (e, first.map_or(APIKEY_CHALLENGE, |a| a.challenge(e))));
    };
    match found {
        Found::Cert(m, cert) => {
            let a = authn
                .iter()
                .find(|a| a.name() == &m.name)
                .map(|a| a.as_ref());
            let r = m.verify(cert).map_err(|e| fail(a, e));
            if r.is_ok() {
                crate::metrics::auth_attempt(&m.name, None);
            }
            r
        }
        Found::ApiKey(k, key) => {
            let a = authn
                .iter()
                .find(|a| a.name() == &k.name)
                .map(|a| a.as_ref());
            let r = k.verify(key, now).map_err(|e| fail(a, e));
            if r.is_ok() {
                crate::metrics::auth_attempt(&k.name, None);
            }
            r
        }
        Found::Bearer(token) => {
            // Several JWT authenticators (several issuers): the token's unverified `iss` only
            // *selects* which one verifies it; that one then checks everything.
            let chosen = if jwts.len() == 1 {
                Some(jwts[0])
            } else {
                let iss = jwt::split(token).ok().and_then(|p| {
                    p.payload
                        .get("iss")
                        .and_then(|v| v.as_str().map(str::to_string))
                });
                iss.and_then(|iss| {
                    jwts.iter()
                        .copied()
                        .find(|j| j.issuer.as_deref() == Some(iss.as_str()))
                })
            };
            let jwt_auth = authn
                .iter()
                .find(|a| matches!(a.as_ref(), Authenticator::Jwt(_)))
                .map(|a| a.as_ref());
            let Some(j) = chosen else {
                return Err(fail(jwt_auth, AuthError::BadIssuer));
            };
            let a = authn
                .iter()
                .find(|a| a.name() == &j.name)
                .map(|a| a.as_ref());
            let r = j.verify_async(token, now).await.map_err(|e| fail(a, e));
            if r.is_ok() {
                crate::metrics::auth_attempt(&j.name, None);
            }
            r
        }
    }
}

/// Remove every credential the route's authenticators read from what goes upstream: their
/// headers (done by `forward`) and their query parameters (returned here).
pub fn strip_query_credentials(authn: &[Arc<Authenticator>], query: &str) -> Option<String> {
    let names: Vec<&str> = authn
        .iter()
        .filter_map(|a| match a.as_ref() {
            Authenticator::ApiKey(k) => k.query.as_deref(),
            Authenticator::Jwt(_) | Authenticator::Mtls(_) => None,
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
