//! Authorization policy evaluation: never panics, and behaves like a policy should:
//! - a caller with more scopes, roles, groups or claim values is never denied where a caller
//!   with fewer was allowed (monotonic);
//! - shadow mode never denies;
//! - an address on the deny list is always denied, and one outside a non-empty allow list too.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use portcullis::auth::{AuthMethod, Principal};
use portcullis::authz::{apply_mode, check_network, check_principal, ClaimRule, Policy};
use portcullis::clientip::{Cidr, CidrSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Small alphabet so that policy values and credential values collide often.
fn word(u: &mut Unstructured) -> arbitrary::Result<String> {
    const W: [&str; 6] = ["a", "b", "admin", "orders:read", "", "A"];
    Ok(W[u.choose_index(W.len())?].to_string())
}

fn words(u: &mut Unstructured) -> arbitrary::Result<Vec<String>> {
    let n = u.int_in_range(0..=3)?;
    (0..n).map(|_| word(u)).collect()
}

fn method(u: &mut Unstructured) -> arbitrary::Result<AuthMethod> {
    Ok([AuthMethod::ApiKey, AuthMethod::Jwt, AuthMethod::Mtls][u.choose_index(3)?])
}

fn cidrs(u: &mut Unstructured) -> arbitrary::Result<CidrSet> {
    let n = u.int_in_range(0..=2)?;
    let mut v = Vec::new();
    for _ in 0..n {
        let ip = IpAddr::from(<[u8; 4]>::arbitrary(u)?);
        let prefix = u.int_in_range(0..=32)?;
        // Normalise host bits away by parsing the network form.
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let IpAddr::V4(v4) = ip else { unreachable!() };
        let net = std::net::Ipv4Addr::from(u32::from(v4) & mask);
        if let Ok(c) = Cidr::parse(&format!("{net}/{prefix}")) {
            v.push(c);
        }
    }
    Ok(CidrSet::new(v))
}

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let claim_paths = ["tenant", "org.id"];
    let mut claims = Vec::new();
    for p in claim_paths {
        if bool::arbitrary(u)? {
            claims.push(ClaimRule {
                path: p.into(),
                accepted: words(u)?,
            });
        }
    }
    let policy = Policy {
        name: "fuzz".into(),
        ip_allow: cidrs(u)?,
        ip_deny: cidrs(u)?,
        auth_methods: (0..u.int_in_range(0..=2)?)
            .map(|_| method(u))
            .collect::<arbitrary::Result<_>>()?,
        scopes_all: words(u)?,
        scopes_any: words(u)?,
        roles_all: words(u)?,
        roles_any: words(u)?,
        groups_all: words(u)?,
        groups_any: words(u)?,
        claims,
        shadow: bool::arbitrary(u)?,
    };
    let mut pc = Vec::new();
    for p in claim_paths {
        pc.push((Arc::<str>::from(p), words(u)?.into_boxed_slice()));
    }
    let p = Principal {
        method: method(u)?,
        authenticator: "a".into(),
        subject: "s".into(),
        consumer: None,
        key_id: None,
        issuer: None,
        scopes: words(u)?.into(),
        roles: words(u)?.into(),
        groups: words(u)?.into(),
        claims: Vec::new().into(),
        policy_claims: pc.into(),
        expires_at: None,
    };
    let first = check_principal(&policy, &p);
    assert_eq!(first, check_principal(&policy, &p), "not deterministic");
    // Monotonic: add values everywhere; an allowed caller stays allowed.
    let extra = words(u)?;
    let grow = |v: &[String]| -> Arc<[String]> { v.iter().chain(extra.iter()).cloned().collect() };
    let bigger = Principal {
        scopes: grow(&p.scopes),
        roles: grow(&p.roles),
        groups: grow(&p.groups),
        policy_claims: p
            .policy_claims
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().chain(extra.iter()).cloned().collect()))
            .collect::<Vec<_>>()
            .into(),
        ..p.clone()
    };
    if first.is_ok() {
        assert_eq!(
            check_principal(&policy, &bigger),
            Ok(()),
            "more rights, denied"
        );
    }
    let mut shadowed = None;
    assert_eq!(apply_mode(true, first, &mut shadowed), Ok(()));
    assert_eq!(shadowed, first.err());
    // Network rules.
    let ip = IpAddr::from(<[u8; 4]>::arbitrary(u)?);
    let net = check_network(&policy, Some(ip));
    if policy.ip_deny.contains(&ip) {
        assert!(net.is_err(), "denied address allowed");
    }
    if !policy.ip_allow.is_empty() && !policy.ip_allow.contains(&ip) {
        assert!(net.is_err(), "address outside the allow list allowed");
    }
    if net.is_err() {
        assert!(policy.ip_deny.contains(&ip) || !policy.ip_allow.contains(&ip));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
