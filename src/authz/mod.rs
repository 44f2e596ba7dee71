//! Route-level authorization: may this caller use this route at all? Called from
//! `request_filter` (through [`crate::gateway::admit`]) in two steps — [`check_network`] before
//! authentication (client IP rules, so blocked networks never reach token verification) and
//! [`check_principal`] after it. Never does I/O, never allocates on the allow path.
//!
//! A [`Policy`] is compiled from `policies:` or a route's inline `authz:`. Every condition that
//! is present must hold (AND). Object-level decisions ("may alice read order 42") stay in the
//! services; the gateway only answers the coarse question, and answers it fail-closed: a
//! principal that lacks the data a condition needs (an API key has no claims) is denied.
//!
//! In `shadow` mode a failed check is recorded as `shadow_deny` and the request goes on — for
//! rolling out a new policy against real traffic before enforcing it. Shadow mode never relaxes
//! authentication: a request without valid credentials is still 401.

use crate::auth::{AuthMethod, Principal};
use crate::clientip::CidrSet;
use std::net::IpAddr;
use std::sync::Arc;
use thiserror::Error;

/// Why a policy refused the caller. Every variant answers 403; `code()` is the stable reason
/// (response body, metrics label, logs). The body names the reason, never which scope or
/// claim value was expected — those are policy internals.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    #[error("requests from this address are not allowed on this route")]
    IpDenied,
    #[error("this authentication method is not allowed on this route")]
    AuthMethodNotAllowed,
    #[error("the credential lacks a required scope")]
    InsufficientScope,
    #[error("the caller lacks a required role")]
    MissingRole,
    #[error("the caller lacks a required group")]
    MissingGroup,
    #[error("a claim of the credential does not have an accepted value")]
    ClaimMismatch,
}

impl Denial {
    pub fn code(self) -> &'static str {
        match self {
            Denial::IpDenied => "ip_denied",
            Denial::AuthMethodNotAllowed => "auth_method_not_allowed",
            Denial::InsufficientScope => "insufficient_scope",
            Denial::MissingRole => "missing_role",
            Denial::MissingGroup => "missing_group",
            Denial::ClaimMismatch => "claim_mismatch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
}

/// One claim condition: the claim at `path` must have one of `accepted` (for array claims:
/// any element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub path: Arc<str>,
    pub accepted: Vec<String>,
}

/// A compiled policy. Empty lists mean "no condition".
#[derive(Debug, Default)]
pub struct Policy {
    /// `policies.<name>`, or `routes[i].authz` for inline ones; for logs only.
    pub name: String,
    pub ip_allow: CidrSet,
    pub ip_deny: CidrSet,
    /// Allowed authentication methods; empty = any.
    pub auth_methods: Vec<AuthMethod>,
    pub scopes_all: Vec<String>,
    pub scopes_any: Vec<String>,
    pub roles_all: Vec<String>,
    pub roles_any: Vec<String>,
    pub groups_all: Vec<String>,
    pub groups_any: Vec<String>,
    pub claims: Vec<ClaimRule>,
    pub shadow: bool,
}

impl Policy {
    /// Whether the policy has conditions that need a principal (as opposed to IP rules only).
    pub fn needs_principal(&self) -> bool {
        !(self.auth_methods.is_empty()
            && self.scopes_all.is_empty()
            && self.scopes_any.is_empty()
            && self.roles_all.is_empty()
            && self.roles_any.is_empty()
            && self.groups_all.is_empty()
            && self.groups_any.is_empty()
            && self.claims.is_empty())
    }
}

/// The authorization outcome of one request, kept in the request context for metrics, logs
/// and (with the audit issue) the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The route is public (no principal); IP rules, if any, passed.
    Public,
    /// Authenticated; the route has no principal conditions.
    Authenticated,
    /// Authenticated and the route's policy allowed it.
    Allowed,
    Denied(Denial),
    /// The policy denied it but runs in shadow mode: let through.
    ShadowDenied(Denial),
}

impl Decision {
    /// `decision` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Public | Decision::Authenticated | Decision::Allowed => "allow",
            Decision::Denied(_) => "deny",
            Decision::ShadowDenied(_) => "shadow_deny",
        }
    }

    /// `reason` metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Decision::Public => "public",
            Decision::Authenticated => "authenticated",
            Decision::Allowed => "policy",
            Decision::Denied(d) | Decision::ShadowDenied(d) => d.code(),
        }
    }
}

/// Count the request's decision and log shadow denials (called once, from `logging`). The
/// shadow-deny log line is what operators read before switching a policy to `enforce`.
pub fn record(
    route: &str,
    compiled: Option<&crate::route::Route>,
    decision: Decision,
    request_id: &str,
) {
    match compiled {
        Some(r) if decision.label() == "allow" => {
            crate::metrics::authz_allow(route, &r.metrics, decision.reason())
        }
        _ => crate::metrics::authz_decision(route, decision.label(), decision.reason()),
    }
    if let Decision::ShadowDenied(d) = decision {
        log::info!(
            "shadow_deny route={route} reason={} request_id={request_id}",
            d.code()
        );
    }
}

/// Client IP rules: deny wins over allow; with an allow list, an address must be on it. A
/// request without a known client IP (no socket address) fails an allow list.
pub fn check_network(policy: &Policy, client_ip: Option<IpAddr>) -> Result<(), Denial> {
    if policy.ip_allow.is_empty() && policy.ip_deny.is_empty() {
        return Ok(());
    }
    let Some(ip) = client_ip else {
        return Err(Denial::IpDenied);
    };
    if policy.ip_deny.contains(&ip) {
        return Err(Denial::IpDenied);
    }
    if !policy.ip_allow.is_empty() && !policy.ip_allow.contains(&ip) {
        return Err(Denial::IpDenied);
    }
    Ok(())
}

/// Conditions on the verified caller, checked in a fixed order so the reported reason is
/// deterministic: method, scopes, roles, groups, claims.
pub fn check_principal(policy: &Policy, p: &Principal) -> Result<(), Denial> {
    if !policy.auth_methods.is_empty() && !policy.auth_methods.contains(&p.method) {
        return Err(Denial::AuthMethodNotAllowed);
    }
    if !all_of(&policy.scopes_all, &p.scopes) || !any_of(&policy.scopes_any, &p.scopes) {
        return Err(Denial::InsufficientScope);
    }
    if !all_of(&policy.roles_all, &p.roles) || !any_of(&policy.roles_any, &p.roles) {
        return Err(Denial::MissingRole);
    }
    if !all_of(&policy.groups_all, &p.groups) || !any_of(&policy.groups_any, &p.groups) {
        return Err(Denial::MissingGroup);
    }
    for rule in &policy.claims {
        let values = p
            .policy_claims
            .iter()
            .find(|(path, _)| **path == *rule.path)
            .map(|(_, v)| &v[..])
            .unwrap_or_default();
        if !values.iter().any(|v| rule.accepted.iter().any(|a| a == v)) {
            return Err(Denial::ClaimMismatch);
        }
    }
    Ok(())
}

/// Apply the policy mode to a check result: enforce → the denial stands; shadow → recorded.
pub fn apply_mode(
    shadow: bool,
    result: Result<(), Denial>,
    shadowed: &mut Option<Denial>,
) -> Result<(), Denial> {
    match result {
        Err(d) if shadow => {
            // Keep the first shadow denial: it is the one an enforced policy would have sent.
            shadowed.get_or_insert(d);
            Ok(())
        }
        r => r,
    }
}

fn all_of(required: &[String], have: &[String]) -> bool {
    required.iter().all(|r| have.iter().any(|h| h == r))
}

fn any_of(wanted: &[String], have: &[String]) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| have.iter().any(|h| h == w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clientip::Cidr;

    fn principal(method: AuthMethod) -> Principal {
        Principal {
            method,
            authenticator: "a".into(),
            subject: "alice".into(),
            consumer: None,
            key_id: None,
            issuer: None,
            scopes: vec!["orders:read".to_string(), "orders:write".to_string()].into(),
            roles: vec!["reader".to_string()].into(),
            groups: vec!["staff".to_string()].into(),
            claims: Vec::new().into(),
            policy_claims: vec![(
                Arc::from("tenant"),
                vec!["acme".to_string()].into_boxed_slice(),
            )]
            .into(),
            expires_at: None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn each_condition_and_its_reason() {
        let p = principal(AuthMethod::Jwt);
        let ok = Policy {
            scopes_all: s(&["orders:read"]),
            scopes_any: s(&["x", "orders:write"]),
            roles_any: s(&["admin", "reader"]),
            groups_all: s(&["staff"]),
            claims: vec![ClaimRule {
                path: "tenant".into(),
                accepted: s(&["globex", "acme"]),
            }],
            auth_methods: vec![AuthMethod::Jwt],
            ..Policy::default()
        };
        assert_eq!(check_principal(&ok, &p), Ok(()));
        let cases: Vec<(Policy, Denial)> = vec![
            (
                Policy {
                    auth_methods: vec![AuthMethod::Mtls],
                    ..Policy::default()
                },
                Denial::AuthMethodNotAllowed,
            ),
            (
                Policy {
                    scopes_all: s(&["orders:read", "orders:delete"]),
                    ..Policy::default()
                },
                Denial::InsufficientScope,
            ),
            (
                Policy {
                    scopes_any: s(&["admin"]),
                    ..Policy::default()
                },
                Denial::InsufficientScope,
            ),
            (
                Policy {
                    roles_all: s(&["reader", "admin"]),
                    ..Policy::default()
                },
                Denial::MissingRole,
            ),
            (
                Policy {
                    groups_any: s(&["ops"]),
                    ..Policy::default()
                },
                Denial::MissingGroup,
            ),
            (
                Policy {
                    claims: vec![ClaimRule {
                        path: "tenant".into(),
                        accepted: s(&["globex"]),
                    }],
                    ..Policy::default()
                },
                Denial::ClaimMismatch,
            ),
            (
                Policy {
                    claims: vec![ClaimRule {
                        path: "org.id".into(),
                        accepted: s(&["acme"]),
                    }],
                    ..Policy::default()
                },
                Denial::ClaimMismatch,
            ),
        ];
        for (policy, want) in cases {
            assert_eq!(check_principal(&policy, &p), Err(want), "{policy:?}");
        }
    }

    #[test]
    fn ip_rules() {
        let set = |v: &[&str]| CidrSet::new(v.iter().map(|c| Cidr::parse(c).unwrap()).collect());
        let p = Policy {
            ip_allow: set(&["10.0.0.0/8"]),
            ip_deny: set(&["10.9.0.0/16"]),
            ..Policy::default()
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(check_network(&p, ip("10.1.2.3")), Ok(()));
        assert_eq!(check_network(&p, ip("::ffff:10.1.2.3")), Ok(()));
        assert_eq!(check_network(&p, ip("10.9.1.1")), Err(Denial::IpDenied));
        assert_eq!(check_network(&p, ip("192.0.2.1")), Err(Denial::IpDenied));
        assert_eq!(check_network(&p, None), Err(Denial::IpDenied));
        assert_eq!(check_network(&Policy::default(), None), Ok(()));
    }

    #[test]
    fn shadow_records_first_denial_and_passes() {
        let mut shadowed = None;
        assert_eq!(
            apply_mode(true, Err(Denial::IpDenied), &mut shadowed),
            Ok(())
        );
        assert_eq!(
            apply_mode(true, Err(Denial::MissingRole), &mut shadowed),
            Ok(())
        );
        assert_eq!(shadowed, Some(Denial::IpDenied));
        let mut none = None;
        assert_eq!(
            apply_mode(false, Err(Denial::MissingRole), &mut none),
            Err(Denial::MissingRole)
        );
        assert_eq!(none, None);
    }
}
