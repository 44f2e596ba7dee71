//! mTLS through the real gateway with curl as the TLS client: required and optional client
//! certificates, a certificate from an untrusted issuer, identity mapping, and the identity
//! header contract.

mod common;
use common::*;

struct Setup {
    gw: Gateway,
    required: u16,
    optional: u16,
    _e: Echo,
}

fn setup() -> Setup {
    let e = Echo::start("e");
    let (required, optional) = (free_port(), free_port());
    let tls = |port: u16, mode: &str| {
        format!(
            "    - addr: \"127.0.0.1:{port}\"\n      tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\", client_auth: {mode} }}\n",
            fixture("tls/server.pem"),
            fixture("tls/server.key"),
            fixture("tls/ca.pem")
        )
    };
    let listeners = tls(required, "required") + &tls(optional, "optional");
    let body = format!(
        r#"authenticators:
  spiffe: {{ mtls: {{ identity: san_uri }} }}
  cn: {{ mtls: {{ identity: subject_cn }} }}
upstreams:
  e: {{ targets: ["{}"] }}
routes:
  - {{ id: m, match: {{ path_prefix: /m }}, upstream: e, authn: [spiffe] }}
  - {{ id: cn, match: {{ path_prefix: /cn }}, upstream: e, authn: [cn] }}
  - {{ id: pub, match: {{ path_prefix: /pub }}, upstream: e, public: true }}
"#,
        e.addr
    );
    Setup {
        gw: Gateway::start_with(&listeners, "", &body),
        required,
        optional,
        _e: e,
    }
}

/// curl over TLS; returns (curl exit code, status, body).
fn curl(port: u16, path: &str, cert: Option<&str>) -> (i32, u16, String) {
    let mut args = vec![
        "-sS".to_string(),
        "-w".into(),
        "\n%{http_code}".into(),
        "--cacert".into(),
        fixture("tls/ca.pem"),
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
        "-H".into(),
        "X-Portcullis-Subject: spoofed".into(),
    ];
    if let Some(c) = cert {
        args.extend([
            "--cert".into(),
            fixture(&format!("tls/{c}.pem")),
            "--key".into(),
            fixture(&format!("tls/{c}.key")),
        ]);
    }
    args.push(format!("https://localhost:{port}{path}"));
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (
        out.status.code().unwrap_or(-1),
        code.parse().unwrap_or(0),
        body.to_string(),
    )
}

#[test]
fn required_client_certificates() {
    let s = setup();
    let (rc, status, body) = curl(s.required, "/m/x", Some("client"));
    assert_eq!((rc, status), (0, 200), "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let h = &j["headers"];
    assert_eq!(
        h["x-portcullis-subject"][0],
        "spiffe://portcullis.test/alice"
    );
    assert_eq!(
        h["x-portcullis-subject"].as_array().unwrap().len(),
        1,
        "spoofed copy survived"
    );
    assert_eq!(h["x-portcullis-auth-method"][0], "mtls");
    let (rc, status, body) = curl(s.required, "/cn/x", Some("client"));
    assert_eq!((rc, status), (0, 200), "{body}");
    assert!(
        body.contains("\"x-portcullis-subject\":[\"alice\"]"),
        "{body}"
    );
    // No certificate, or one no trusted CA issued: the handshake fails, nothing is proxied.
    let (rc, status, _) = curl(s.required, "/pub", None);
    assert!(rc != 0 && status == 0, "no cert: rc {rc} status {status}");
    let (rc, status, _) = curl(s.required, "/pub", Some("rogue-client"));
    assert!(
        rc != 0 && status == 0,
        "rogue cert: rc {rc} status {status}"
    );
}

#[test]
fn optional_client_certificates() {
    let s = setup();
    // Without a certificate: public routes work, mTLS routes are 401.
    let (rc, status, _) = curl(s.optional, "/pub", None);
    assert_eq!((rc, status), (0, 200));
    let (_, status, body) = curl(s.optional, "/m/x", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("credentials_missing"), "{body}");
    let (_, status, body) = curl(s.optional, "/m/x", Some("client"));
    assert_eq!(status, 200, "{body}");
    // An untrusted certificate is refused at the handshake even when certificates are optional.
    let (rc, status, _) = curl(s.optional, "/m/x", Some("rogue-client"));
    assert!(
        rc != 0 && status == 0,
        "rogue cert: rc {rc} status {status}"
    );
    // Plain HTTP listener: no certificate can exist there.
    let r = s.gw.get("/m/x");
    assert_eq!(r.status, 401);
}

#[test]
fn mtls_without_a_client_ca_listener_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(
        &p,
        "server:\n  listen: [{ addr: \"127.0.0.1:18083\" }]\nauthenticators:\n  m: { mtls: { identity: san_dns } }\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("authenticators.m.mtls: no listener has tls.client_ca"),
        "{err}"
    );
}
