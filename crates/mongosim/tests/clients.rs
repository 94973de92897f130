//! Fidelity against clients nobody here wrote: pymongo (PyPI) and the Node.js driver (npm),
//! run as subprocesses against the `mongosim` binary. Their dependencies are installed into
//! the repository's `.cache/` (pymongo) and the suite's `node_modules/` on first use.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    println!("{text}");
}

#[test]
fn pymongo_fidelity_suite() {
    let out = Command::new("bash")
        .arg(repo().join(".ci/install-python-deps.sh"))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "installing pymongo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pythonpath = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Certificates for the TLS test, from a throwaway CA.
    let pki_dir = tempfile::tempdir().unwrap();
    quorumtail_testkit::pki::TestPki::generate(pki_dir.path());
    run(
        Command::new("python3")
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(repo().join("crates/mongosim/tests/python"))
            .env("PYTHONPATH", pythonpath)
            .env("MONGOSIM_BIN", env!("CARGO_BIN_EXE_mongosim"))
            .env("MONGOSIM_TLS_DIR", pki_dir.path()),
        "pytest crates/mongosim/tests/python",
    );
}

#[test]
fn node_driver_fidelity_suite() {
    let dir = repo().join("crates/mongosim/tests/node");
    if !dir.join("node_modules/mongodb").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir),
            "npm ci",
        );
    }
    run(
        Command::new("node")
            .arg("--test")
            .current_dir(&dir)
            .env("MONGOSIM_BIN", env!("CARGO_BIN_EXE_mongosim")),
        "node --test",
    );
}
