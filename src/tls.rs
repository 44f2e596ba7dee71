//! TLS listeners: their `TlsSettings` (built once at start, in `server::run`) and their server
//! certificates, which are *not* fixed at start. Each TLS listener serves the certificate held
//! in a swappable store, set per handshake by the certificate callback; a config reload loads
//! the files again and swaps them in (certificate rotation without new sockets or processes).
//! A certificate or key that does not load or does not match, or a new certificate that has
//! already expired, rejects the whole reload, and the listener keeps the pair it had. An
//! expired certificate already being served is only warned about (and visible in the expiry
//! metric), so it never blocks other changes.
//!
//! The client CA of an mTLS listener is part of the socket's TLS context: changing it needs an
//! upgrade (reported by the reload like any listener change).

use crate::config::{self, Listener, ListenerTls};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::x509::X509;
use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// A server certificate chain and its private key, checked to belong together.
pub struct CertPair {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
    /// Unix time the leaf expires.
    pub not_after: i64,
    /// Hex SHA-256 of the leaf (DER), to tell certificates apart in `/config` and logs.
    pub fingerprint: String,
}

/// Read and check a PEM certificate chain (leaf first) and its key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertPair, String> {
    let pem = crate::config::read_file(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let mut certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?
        .into_iter();
    let leaf = certs
        .next()
        .ok_or_else(|| format!("{} holds no certificate", cert.display()))?;
    let key_pem =
        crate::config::read_file(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let key_parsed = PKey::private_key_from_pem(&key_pem)
        .map_err(|_| format!("{}: not a PEM private key", key.display()))?;
    let matches = leaf
        .public_key()
        .map(|p| p.public_eq(&key_parsed))
        .unwrap_or(false);
    if !matches {
        return Err(format!(
            "{} does not belong to the certificate in {}",
            key.display(),
            cert.display()
        ));
    }
    let not_after = asn1_unix(leaf.not_after())
        .ok_or_else(|| format!("{}: unreadable expiry date", cert.display()))?;
    let fingerprint = leaf
        .to_der()
        .ok()
        .and_then(|der| crate::auth::api_key::sha256(&der))
        .map(|d| crate::auth::api_key::hex(&d))
        .unwrap_or_default();
    Ok(CertPair {
        leaf,
        chain: certs.collect(),
        key: key_parsed,
        not_after,
        fingerprint,
    })
}

fn asn1_unix(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// The certificate a listener serves now.
pub struct CertStore {
    pub addr: SocketAddr,
    current: ArcSwap<CertPair>,
}

impl CertPair {
    /// Expired now. Not an error by itself: refusing to start or reload because of it would
    /// take plain listeners, admin and every other change down with it. Warned about, shown in
    /// the expiry metric, and a *new* expired pair is refused by [`prepare`].
    pub fn expired(&self) -> bool {
        self.not_after <= crate::auth::time::now() as i64
    }
}

impl CertStore {
    pub fn current(&self) -> arc_swap::Guard<Arc<CertPair>> {
        self.current.load()
    }
}

fn stores() -> &'static Mutex<HashMap<SocketAddr, Arc<CertStore>>> {
    static S: OnceLock<Mutex<HashMap<SocketAddr, Arc<CertStore>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Every TLS listener's store, for `/config` and metrics.
pub fn all_stores() -> Vec<Arc<CertStore>> {
    let map = stores().lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<_> = map.values().cloned().collect();
    v.sort_by_key(|s| s.addr);
    v
}

/// Per-handshake callbacks of a TLS listener: serve the store's certificate; on mTLS
/// listeners also extract the verified client identity.
struct Callbacks {
    store: Arc<CertStore>,
    mtls: bool,
}

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        use pingora::tls::ext;
        let pair = self.store.current();
        // A failure leaves the handshake without a certificate: it fails (closed), it never
        // falls back to anything else.
        let set = ext::ssl_use_certificate(ssl, &pair.leaf)
            .and_then(|()| ext::ssl_use_private_key(ssl, &pair.key))
            .and_then(|()| {
                pair.chain
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(e) = set {
            log::error!("TLS {}: cannot set the certificate: {e}", self.store.addr);
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        if self.mtls {
            crate::auth::mtls::ClientCertExtractor
                .handshake_complete_callback(ssl)
                .await
        } else {
            None
        }
    }
}

/// TLS 1.2+ (Mozilla "intermediate"), ALPN h2 and http/1.1, the certificate from the
/// listener's store; with `client_ca`, client certificates are verified against it during the
/// handshake and their identity is extracted once per connection (see `auth::mtls`).
pub fn settings(addr: SocketAddr, tls: &ListenerTls) -> Result<TlsSettings, String> {
    use pingora::tls::ssl::SslVerifyMode;
    let pair = load_pair(&tls.cert, &tls.key)?;
    let store = Arc::new(CertStore {
        addr,
        current: ArcSwap::from_pointee(pair),
    });
    crate::metrics::tls_cert_expiry(&addr.to_string(), store.current().not_after);
    stores()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr, store.clone());
    let mut s = TlsSettings::with_callbacks(Box::new(Callbacks {
        store,
        mtls: tls.client_auth.is_some(),
    }))
    .map_err(|e| e.to_string())?;
    if let Some((ca, mode)) = &tls.client_auth {
        s.set_ca_file(ca).map_err(|e| e.to_string())?;
        // Tell clients which CAs are accepted.
        if let Ok(names) = pingora::tls::x509::X509Name::load_client_ca_file(ca) {
            s.set_client_ca_list(names);
        }
        // Required by OpenSSL for session resumption when client certificates are verified.
        s.set_session_id_context(b"portcullis")
            .map_err(|e| e.to_string())?;
        let verify = match mode {
            config::raw::ClientAuth::Optional => SslVerifyMode::PEER,
            config::raw::ClientAuth::Required => {
                SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT
            }
        };
        s.set_verify(verify);
    }
    s.enable_h2();
    Ok(s)
}

/// Certificates loaded for a reload, swapped in by [`Rotation::apply`] once the whole config
/// is accepted.
pub struct Rotation(Vec<(Arc<CertStore>, CertPair)>);

/// Load the certificate files of every running TLS listener from the new config. Listeners
/// this process does not have (or that lost TLS) are left to `restart_needed`.
pub fn prepare(listeners: &[Listener]) -> Result<Rotation, Vec<String>> {
    let live = stores().lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let (Some(tls), Some(store)) = (&l.tls, live.get(&l.addr)) else {
            continue;
        };
        match load_pair(&tls.cert, &tls.key) {
            Ok(pair) if pair.expired() && pair.fingerprint != store.current().fingerprint => {
                errors.push(format!(
                    "server.listen[{i}].tls: {}: the new certificate has already expired",
                    tls.cert.display()
                ));
            }
            Ok(pair) => out.push((store.clone(), pair)),
            Err(e) => errors.push(format!("server.listen[{i}].tls: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(Rotation(out))
    } else {
        Err(errors)
    }
}

impl Rotation {
    pub fn apply(self) {
        for (store, pair) in self.0 {
            let old = store.current().fingerprint.clone();
            if pair.fingerprint != old {
                log::info!(
                    "TLS {}: serving a new certificate (sha256 {}, expires at unix {})",
                    store.addr,
                    &pair.fingerprint[..16.min(pair.fingerprint.len())],
                    pair.not_after
                );
            }
            crate::metrics::tls_cert_expiry(&store.addr.to_string(), pair.not_after);
            store.current.store(Arc::new(pair));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(p)
    }

    /// A self-signed certificate that expired in 2001.
    fn write_expired(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::x509::{X509Builder, X509NameBuilder};
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "expired.localhost")
            .unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(1_000_000_000).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(1_000_086_400).unwrap())
            .unwrap();
        b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let (c, k) = (dir.join("expired.pem"), dir.join("expired.key"));
        std::fs::write(&c, b.build().to_pem().unwrap()).unwrap();
        std::fs::write(&k, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (c, k)
    }

    #[test]
    fn an_expired_pair_loads_but_is_refused_as_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_expired(dir.path());
        let pair = load_pair(&c, &k).unwrap();
        assert!(pair.expired());
        assert_eq!(pair.not_after, 1_000_086_400);
        assert!(!load_pair(&fixture("server.pem"), &fixture("server.key"))
            .unwrap()
            .expired());
        // A listener serving a valid pair: a reload to the expired one is refused, the
        // same pair again is fine.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let tls = |cert: &Path, key: &Path| ListenerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_auth: None,
        };
        settings(addr, &tls(&fixture("server.pem"), &fixture("server.key"))).unwrap();
        let listener = |t| Listener { addr, tls: Some(t) };
        let e = prepare(&[listener(tls(&c, &k))]).err().unwrap();
        assert!(
            e[0].contains("the new certificate has already expired"),
            "{e:?}"
        );
        assert!(prepare(&[listener(tls(
            &fixture("server.pem"),
            &fixture("server.key")
        ))])
        .is_ok());
    }

    #[test]
    fn pairs_must_match_and_parse() {
        let ok = load_pair(&fixture("server.pem"), &fixture("server.key")).unwrap();
        assert_eq!(ok.fingerprint.len(), 64);
        assert!(ok.not_after > 4_000_000_000, "{}", ok.not_after);
        let other = load_pair(&fixture("server2.pem"), &fixture("server2.key")).unwrap();
        assert_ne!(ok.fingerprint, other.fingerprint);
        let e = load_pair(&fixture("server.pem"), &fixture("server2.key"))
            .err()
            .unwrap();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let e = load_pair(&fixture("server.key"), &fixture("server.key"))
            .err()
            .unwrap();
        assert!(
            e.contains("not a PEM certificate chain") || e.contains("holds no certificate"),
            "{e}"
        );
        let e = load_pair(&fixture("server.pem"), &fixture("missing.key"))
            .err()
            .unwrap();
        assert!(e.contains("cannot read"), "{e}");
    }
}
