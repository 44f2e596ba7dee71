//! `portcullis check` and start-up failures: every shipped config validates; broken configs
//! print each problem with its YAML path and exit non-zero, never panic.

mod common;
use common::*;
use std::path::Path;

fn check_text(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).unwrap();
    let (code, _out, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    (code, err)
}

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_shipped_config_validates() {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("conf"), &mut files);
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let (code, out, err) = run_cli(&["check", "-c", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", f.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}

const BASE: &str = "server:\n  listen: [{ addr: \"127.0.0.1:18080\" }]\nupstreams:\n  orders: { targets: [\"127.0.0.1:9001\"] }\n";

#[test]
fn broken_configs_name_each_path() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("server: [unclosed\n".into(), vec!["line 1"]),
        (
            format!("{BASE}routes:\n  - {{ id: a, match: {{ pth: /x }}, upstream: orders, public: true }}\n"),
            vec!["routes[0].match: unknown field `pth`"],
        ),
        (
            format!("{BASE}routes:\n  - {{ id: a, match: {{ path: /a }}, upstream: orders, public: true }}\n  - {{ id: b, match: {{ path: /b }}, upstream: orders, public: true }}\n  - {{ id: c, match: {{ path: /c }}, upstream: orders, public: true }}\n  - {{ id: d, match: {{ path: /d }}, upstream: ordrs, public: true }}\n"),
            vec!["routes[3].upstream: unknown upstream \"ordrs\""],
        ),
        (
            format!("{BASE}routes:\n  - {{ id: a, match: {{ path: /a }}, upstream: orders, public: true }}\n  - {{ id: a, match: {{ path: /b }}, upstream: orders, public: true }}\n"),
            vec!["routes[1].id: duplicate route id \"a\""],
        ),
        (
            BASE.replace("listen:", "trusted_proxies: [\"10.0.0.0/33\", \"nope\"]\n  listen:"),
            vec!["server.trusted_proxies[0]: invalid CIDR", "server.trusted_proxies[1]: invalid CIDR"],
        ),
        (
            format!("{BASE}  slow: {{ targets: [\"127.0.0.1:9002\"], timeouts: {{ read: 30 }} }}\n"),
            vec!["upstreams.slow.timeouts.read: invalid duration \"30\": missing unit"],
        ),
        (
            format!("{BASE}  slow: {{ targets: [\"127.0.0.1:9002\"], timeouts: {{ read: 30x }} }}\n"),
            vec!["upstreams.slow.timeouts.read: invalid duration"],
        ),
        (
            format!("{BASE}  lb: {{ targets: [\"127.0.0.1:9002\"], balance: least_conn }}\n"),
            vec!["upstreams.lb.balance: unknown variant `least_conn`"],
        ),
        (
            format!("{BASE}routes:\n  - {{ id: a, match: {{ path: /a }}, upstream: orders }}\n"),
            vec!["routes[0]: route must name authenticators in authn or say public: true"],
        ),
        (
            format!("{BASE}routes:\n  - {{ id: a, match: {{ path: /a, methods: [GET, TRACE] }}, upstream: orders, public: true }}\n"),
            vec!["routes[0].match.methods[1]: unknown variant `TRACE`"],
        ),
        (
            BASE.replace("listen:", "trusted_proxies: [\"0.0.0.0/0\"]\n  listen:"),
            vec!["server.trusted_proxies[0]: \"0.0.0.0/0\" trusts every address"],
        ),
        (
            format!("{BASE}  t: {{ targets: [\"127.0.0.1:9003\"], tls: {{ sni: \"Example.COM:443\" }} }}\n"),
            vec!["upstreams.t.tls.sni: invalid server name"],
        ),
        (
            BASE.replace("127.0.0.1:18080", "127.0.0.1:9100"),
            vec!["server.admin: admin address 127.0.0.1:9100 shares a port"],
        ),
        (
            format!("{BASE}  tls: {{ targets: [\"127.0.0.1:9003\"], tls: {{ sni: localhost, ca_file: /nonexistent/ca.pem }} }}\n"),
            vec!["upstreams.tls.tls.ca_file: cannot read /nonexistent/ca.pem"],
        ),
    ];
    for (yaml, wants) in cases {
        let (code, err) = check_text(&yaml);
        assert_eq!(code, 1, "accepted:\n{yaml}");
        assert!(!err.contains("panicked"), "{err}");
        for w in wants {
            assert!(err.contains(w), "expected {w:?} in:\n{err}\nfor:\n{yaml}");
        }
        assert!(err.contains("configuration rejected"), "{err}");
    }
}

#[test]
fn all_semantic_errors_are_reported_at_once() {
    let yaml = format!(
        "{BASE}routes:\n  - {{ id: a, match: {{ path: /a }}, upstream: x1, public: true }}\n  - {{ id: b, match: {{ path: /b/../c }}, upstream: x2, public: true }}\n  - {{ id: c, match: {{ path_prefix: /c }}, upstream: orders, strip_prefix: true, authn: [idp] }}\n"
    );
    let (code, err) = check_text(&yaml);
    assert_eq!(code, 1);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(errors.len() >= 4, "{err}");
    for w in [
        "routes[0].upstream",
        "routes[1].upstream",
        "routes[1].match.path",
        "routes[2].authn[0]",
    ] {
        assert!(err.contains(w), "{w} missing in {err}");
    }
}

#[test]
fn unreadable_config_and_default_path() {
    let (code, _, err) = run_cli(&["check", "-c", "/nonexistent/portcullis.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config file"), "{err}");
    // Default path is conf/portcullis.yaml relative to the working directory.
    let out = std::process::Command::new(bin())
        .arg("check")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("conf/portcullis.yaml: ok"));
}

#[test]
fn run_refuses_bad_config_and_busy_port() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "server: {}\n").unwrap();
    let (code, _, err) = run_cli(&["run", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing field `listen`"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = dir.path().join("busy.yaml");
    let text = Gateway::config_text(
        port,
        free_port(),
        dir.path(),
        "",
        "",
        "upstreams:\n  e: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - { id: a, match: { path_prefix: / }, upstream: e, public: true }\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = run_cli(&["run", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn risky_settings_are_warned_about() {
    let yaml = BASE.replace("listen:", "admin: \"0.0.0.0:19999\"\n  listen:")
        + "  t: { targets: [\"127.0.0.1:9003\"], tls: { sni: localhost, verify: false } }\n";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).unwrap();
    let (code, _out, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: server.admin: 0.0.0.0:19999 is not a loopback address"),
        "{err}"
    );
    assert!(
        err.contains("warning: upstreams.t.tls.verify: certificate verification is off"),
        "{err}"
    );
}

#[test]
fn the_systemd_unit_runs_commands_that_exist() {
    let unit =
        std::fs::read_to_string(repo_root().join("conf/systemd/portcullis.service")).unwrap();
    for needed in [
        "Type=notify",
        "NotifyAccess=all",
        "RuntimeDirectoryMode=0700",
    ] {
        assert!(unit.contains(needed), "{needed}");
    }
    let shipped = repo_root().join("conf/portcullis.yaml");
    let shipped = shipped.to_str().unwrap();
    let mut seen = Vec::new();
    for line in unit.lines().filter(|l| l.starts_with("Exec")) {
        let (key, cmd) = line.split_once('=').unwrap();
        let mut words: Vec<&str> = cmd.split_whitespace().collect();
        assert_eq!(words[0], "/usr/local/bin/portcullis", "{line}");
        // Same arguments against the shipped config: the subcommand and flags must parse.
        for w in words.iter_mut() {
            if *w == "/etc/portcullis/portcullis.yaml" {
                *w = shipped;
            }
        }
        let sub = words[1];
        let (code, _, err) = if sub == "check" {
            run_cli(&words[1..])
        } else {
            run_cli(&[sub, "--help"])
        };
        assert_eq!(code, 0, "{line}: {err}");
        seen.push((key.to_string(), sub.to_string()));
    }
    assert!(
        seen.contains(&("ExecReload".into(), "reload".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("ExecStart".into(), "run".into())),
        "{seen:?}"
    );
    let (code, out, _) = run_cli(&["upgrade", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("SIGUSR2"), "{out}");
}

#[test]
fn limits_are_validated_and_files_must_be_small_regular_files() {
    let yaml = "server:\n  listen: [{ addr: \"127.0.0.1:18080\" }]\n  limits: { max_uri_bytes: 64KiB, max_headers: 300, header_timeout: 0s, keepalive_timeout: 5m, h2_max_concurrent_streams: 0 }\nupstreams:\n  orders: { targets: [\"127.0.0.1:9001\"] }\nroutes:\n  - { id: r, match: { path_prefix: / }, upstream: orders, public: true }\n";
    let (code, err) = check_text(yaml);
    assert_eq!(code, 1, "{err}");
    for path in [
        "server.limits.max_uri_bytes:",
        "server.limits.max_headers:",
        "server.limits.header_timeout:",
        "server.limits.keepalive_timeout:",
        "server.limits.h2_max_concurrent_streams:",
    ] {
        assert!(err.contains(path), "{path} missing in: {err}");
    }
    // A secret "file" that is a device or a directory is refused at once, not read forever.
    for file in ["/dev/zero", "/tmp"] {
        let yaml = format!("server:\n  listen: [{{ addr: \"127.0.0.1:18080\" }}]\nauthenticators:\n  j:\n    jwt:\n      algorithms: [HS256]\n      hmac_secret: {{ file: {file} }}\nupstreams:\n  orders: {{ targets: [\"127.0.0.1:9001\"] }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: orders, authn: [j] }}\n");
        let t = std::time::Instant::now();
        let (code, err) = check_text(&yaml);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("authenticators.j.jwt.hmac_secret"), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}

#[test]
fn control_characters_in_yaml_never_split_an_error_line() {
    for yaml in [
        "server:\n  listen: [{ addr: \"127.0.0.1:1\" }]\nauthenticators:\n  \"a\\nerror: forged\":\n    api_key: { keys: [] }\nupstreams: {}\nroutes: []\n",
        "server:\n  listen: [{ addr: \"127.0.0.1:1\" }]\n  limits: { \"x\\n\\nerror: forged\": 1 }\n",
    ] {
        let (code, err) = check_text(yaml);
        assert_eq!(code, 1, "{err}");
        let lines: Vec<&str> = err.lines().collect();
        // One error line (plus the summary line), the newline shown escaped.
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].contains("\\n"), "{err}");
        assert!(!err.lines().any(|l| l.starts_with("error: forged")), "{err}");
    }
}
