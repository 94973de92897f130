//! A throwaway certificate authority for TLS tests: generated fresh by each test, written
//! as PEM files in the layout mongod and the drivers read (`--tlsCertificateKeyFile` holds a
//! certificate followed by its private key; `--tlsCAFile` / `tlsCAFile` holds CA
//! certificates).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA certificate and its key.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// PEM files of one test PKI, all in one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate that signed everything below (`tlsCAFile`).
    pub ca: PathBuf,
    /// A server certificate and key for `localhost` and `127.0.0.1`.
    pub server: PathBuf,
    /// A server certificate and key for `db.example.invalid` only: connecting to
    /// 127.0.0.1 with it is a hostname mismatch.
    pub server_wrong_name: PathBuf,
    /// A client certificate and key (CN `quorumtail`).
    pub client: PathBuf,
    /// Another CA's certificate, which signed none of the above.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> Result<Ca, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca { cert, key })
}

fn leaf(
    issuer: &Ca,
    common_name: &str,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
) -> Result<String, rcgen::Error> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key)?;
    Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
}

impl TestPki {
    /// Generates a CA, server and client certificates, and writes them into `dir`.
    ///
    /// # Panics
    /// When generating or writing fails (a test fixture).
    pub fn generate(dir: &Path) -> TestPki {
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
            path
        };
        let issuer = ca("quorumtail test CA").expect("generate the test CA");
        let other = ca("another test CA").expect("generate the other CA");
        let server = leaf(
            &issuer,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .expect("generate the server certificate");
        let wrong = leaf(
            &issuer,
            "db.example.invalid",
            &["db.example.invalid"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .expect("generate the misnamed server certificate");
        let client = leaf(
            &issuer,
            "quorumtail",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .expect("generate the client certificate");
        TestPki {
            ca: write("ca.pem", issuer.cert.pem()),
            server: write("server.pem", server),
            server_wrong_name: write("server-wrong-name.pem", wrong),
            client: write("client.pem", client),
            other_ca: write("other-ca.pem", other.cert.pem()),
        }
    }
}
