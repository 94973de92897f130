//! The command line as users run it.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quorumtail"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every example in config/ is a valid configuration.
#[test]
fn every_example_config_passes_check() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = bin()
                .arg("check")
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains(": OK"), "{stdout}");
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected the example configs, found {seen}");
}

#[test]
fn check_prints_the_resolved_topology() {
    let out = bin()
        .args(["check", "--config"])
        .arg(repo().join("config/static.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(
            "shard shard01: quorum 2 of 3 data-bearing member(s) (majority of 3 voter(s))"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("member 127.0.0.1:27023"), "{stdout}");
}

#[test]
fn check_never_prints_credentials() {
    let out = bin()
        .args(["check", "--config"])
        .arg(repo().join("config/kafka.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("secret"), "{stdout}");
    assert!(stdout.contains("quorumtail:***@"), "{stdout}");
}

#[test]
fn check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[shards]]\nname = \"a\"\nmembers = []\n[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\narbiters = 2\n").unwrap();
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(stderr.contains("shards[0].members: empty"), "{stderr}");
    assert!(
        stderr.contains("shards[1].name: shard \"a\" is defined twice"),
        "{stderr}"
    );
    assert!(stderr.contains("shards[1].quorum"), "{stderr}");

    let missing = bin()
        .args(["check", "--config", "/nonexistent/q.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file"));
}

#[test]
fn version_flag() {
    let out = bin().arg("--version").output().unwrap();
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("quorumtail 0."));
}
