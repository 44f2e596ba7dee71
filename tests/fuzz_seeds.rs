//! Every checked-in fuzz seed (`fuzz/seeds/<target>/`) through its target's entry point in
//! `portcullis::fuzzing`: keeps past findings fixed and the targets compiling without nightly.

use std::path::PathBuf;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "{target}: only {} seeds", out.len());
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    for (path, data) in seeds(target) {
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: seed {} panicked", path.display());
    }
}

#[test]
fn config_seeds() {
    replay("config", portcullis::fuzzing::config);
}

#[test]
fn jwt_seeds() {
    replay("jwt", portcullis::fuzzing::jwt);
}

#[test]
fn credentials_seeds() {
    replay("credentials", portcullis::fuzzing::credentials);
}

#[test]
fn front_door_seeds() {
    replay("front_door", portcullis::fuzzing::front_door);
}

/// The harness reaches deep: known seeds get the outcome the gateway gives them for real.
#[test]
fn targets_reach_the_checks_they_fuzz() {
    let seed = |t: &str, n: &str| {
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/seeds/{t}/{n}")))
            .unwrap()
    };
    use portcullis::fuzzing::{front_door_outcome, jwt_outcome};
    for (name, want) in [
        ("get-open", Some(0)),
        ("jwt", Some(0)),
        ("jwt-cookie", Some(0)),
        ("key-header", Some(0)),
        ("key-query", Some(0)),
        ("chunked", Some(0)),
        ("absolute", Some(401)),
        ("te-cl", Some(400)),
        ("te-case", Some(400)),
        ("bare-lf", Some(400)),
        ("chunk-overflow", Some(400)),
        ("upgrade", Some(400)),
        ("big-body", Some(413)),
        ("http10", Some(0)),
    ] {
        assert_eq!(
            front_door_outcome(&seed("front_door", name)),
            want,
            "{name}"
        );
    }
    assert_eq!(
        front_door_outcome(b"GET /keys HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(401)
    );
    assert_eq!(front_door_outcome(b"GARBAGE\r\n\r\n"), None);
    assert_eq!(jwt_outcome(&seed("jwt", "good")), 1);
    for bad in [
        "dup-alg",
        "exp-string",
        "exp-huge",
        "crit",
        "raw-none",
        "raw-token",
    ] {
        assert_eq!(jwt_outcome(&seed("jwt", bad)), 0, "{bad}");
    }
}
