//! mTLS: client certificates verified during the TLS handshake (against the listener's
//! `client_ca`), their identity extracted once per connection in the handshake callback, and
//! mapped to a principal by an `mtls` authenticator in `request_filter`.

use super::{AuthError, AuthMethod, Principal};
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::nid::Nid;
use pingora::tls::x509::X509VerifyResult;
use std::any::Any;
use std::sync::Arc;

/// What a verified client certificate says, attached to the connection's TLS digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub subject_cn: Option<String>,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
}

/// Handshake callback for listeners with `client_ca`.
pub struct ClientCertExtractor;

#[async_trait]
impl TlsAccept for ClientCertExtractor {
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // OpenSSL already failed the handshake for an untrusted certificate; check again so
        // nothing unverified can ever become an identity.
        if ssl.verify_result() != X509VerifyResult::OK {
            return None;
        }
        let cert = ssl.peer_certificate()?;
        let mut out = ClientCert {
            subject_cn: cert
                .subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .next()
                .and_then(|e| e.data().to_string().ok()),
            ..ClientCert::default()
        };
        if let Some(names) = cert.subject_alt_names() {
            for n in names.iter() {
                if let Some(d) = n.dnsname() {
                    out.san_dns.push(d.to_string());
                }
                if let Some(u) = n.uri() {
                    out.san_uri.push(u.to_string());
                }
            }
        }
        Some(Arc::new(out))
    }
}

/// Which certificate field names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    SanUri,
    SanDns,
    SubjectCn,
}

#[derive(Debug)]
pub struct MtlsAuth {
    pub name: Arc<str>,
    pub identity: Identity,
}

impl MtlsAuth {
    pub fn verify(&self, cert: &ClientCert) -> Result<Principal, AuthError> {
        let id = match self.identity {
            Identity::SanUri => cert.san_uri.first(),
            Identity::SanDns => cert.san_dns.first(),
            Identity::SubjectCn => cert.subject_cn.as_ref(),
        }
        .filter(|s| !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .ok_or(AuthError::CertificateIdentityMissing)?;
        Ok(Principal {
            method: AuthMethod::Mtls,
            authenticator: self.name.clone(),
            subject: id.as_str().into(),
            consumer: None,
            key_id: None,
            issuer: None,
            scopes: Vec::new().into(),
            roles: Vec::new().into(),
            groups: Vec::new().into(),
            claims: Vec::new().into(),
            policy_claims: Vec::new().into(),
            expires_at: None,
        })
    }
}
