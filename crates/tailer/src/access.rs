//! How quorumtail reaches a MongoDB process: connection-string options, credentials and
//! TLS, the same for tailers, discovery and `check --connect`.
//!
//! TLS uses the driver's rustls: the member's certificate must chain to a CA in
//! `ca_file` (or the system's roots when it is not set) and name the host quorumtail
//! connects to (the member's address as listed or discovered). There is deliberately no
//! switch to skip either check: a CDC tool that accepts any certificate hands the
//! database's whole change history to whoever can intercept its connections.
//!
//! TLS failures are configuration errors, not outages: [`tls_refusal`] turns the driver's
//! error into one message naming the member, what its certificate lacks and the fix.

use std::path::PathBuf;

use mongodb::options::{ClientOptions, Credential, Tls, TlsOptions};

/// TLS settings (`[mongo] tls = true`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) the members' certificates must chain to; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key (PEM), for members that require one.
    pub certificate_key_file: Option<PathBuf>,
}

/// Connection settings shared by every connection quorumtail opens to MongoDB.
#[derive(Clone, Default)]
pub struct MongoAccess {
    /// Extra connection-string options (`[mongo] uri_options`), without a leading `?`/`&`.
    pub uri_options: String,
    /// User name.
    pub username: Option<String>,
    /// Password (never logged).
    pub password: Option<String>,
    /// TLS, when enabled.
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for MongoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoAccess")
            .field("uri_options", &"<redacted>")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl MongoAccess {
    /// Client options for `uri` (which has a `?` and options of its own) with the user's
    /// options appended, the credentials and TLS applied.
    ///
    /// # Errors
    /// A connection string the driver cannot parse.
    pub async fn client_options(&self, uri: &str) -> mongodb::error::Result<ClientOptions> {
        let mut uri = uri.to_owned();
        if !self.uri_options.is_empty() {
            uri.push('&');
            uri.push_str(&self.uri_options);
        }
        let mut opts = ClientOptions::parse(uri).await?;
        if let Some(user) = &self.username {
            // Keep what the options say about the credential (authSource, authMechanism).
            let mut credential = opts.credential.take().unwrap_or_else(Credential::default);
            credential.username = Some(user.clone());
            credential.password = self.password.clone();
            if credential.source.is_none() {
                // Without a user in the connection string itself the driver drops
                // `authSource` (it keeps it only next to a user or a mechanism).
                credential.source = option(&self.uri_options, "authSource");
            }
            opts.credential = Some(credential);
        }
        if let Some(tls) = self.tls_options() {
            opts.tls = Some(tls);
        }
        Ok(opts)
    }

    /// The driver's TLS settings, when TLS is enabled.
    pub fn tls_options(&self) -> Option<Tls> {
        self.tls.as_ref().map(|tls| {
            Tls::Enabled(
                TlsOptions::builder()
                    .ca_file_path(tls.ca_file.clone())
                    .cert_key_file_path(tls.certificate_key_file.clone())
                    .build(),
            )
        })
    }
}

/// The value of connection-string option `name` (case-insensitive, as the driver reads
/// option names) in `options` (`a=1&b=2`).
fn option(options: &str, name: &str) -> Option<String> {
    options
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_owned())
}

/// The refusal a TLS failure amounts to, naming `node`, what went wrong and the fix;
/// `None` when `e` is not a TLS failure.
pub fn tls_refusal(access: &MongoAccess, node: &str, e: &mongodb::error::Error) -> Option<String> {
    // The driver reports handshake failures inside a server-selection error's topology
    // description, as text; rustls's messages are stable ("invalid peer certificate: ...",
    // "received fatal alert: ...", "received corrupt message ...").
    let text = e.to_string();
    let detail = |marker: &str| -> Option<String> {
        let start = text.find(marker)?;
        let rest = &text[start..];
        let end = rest.find(", labels:").unwrap_or(rest.len());
        Some(rest[..end].trim_end().to_owned())
    };
    let ca = match access.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        Some(p) => format!("[mongo] tls_ca_file ({})", p.display()),
        None => "the system's CA store ([mongo] tls_ca_file is not set)".to_owned(),
    };
    if let Some(d) = detail("invalid peer certificate") {
        let fix = if d.contains("not valid for name") {
            format!("connect to {node} by a name its certificate holds (list the member that way, or as its replica set configuration names it), or reissue the certificate with this name")
        } else if d.contains("UnknownIssuer") || d.contains("issuer") {
            format!("put the CA that signed the member's certificate into {ca}")
        } else {
            format!("renew or reissue the member's certificate, or check {ca}")
        };
        return Some(format!(
            "TLS to {node} failed: the member's certificate is not accepted ({d}); fix: {fix}"
        ));
    }
    if let Some(d) = detail("received fatal alert") {
        let fix = if access
            .tls
            .as_ref()
            .is_some_and(|t| t.certificate_key_file.is_none())
        {
            "the member may require a client certificate: set [mongo] tls_certificate_key_file"
        } else {
            "the member may not accept [mongo] tls_certificate_key_file: check that its tlsCAFile holds the CA that signed it"
        };
        return Some(format!(
            "TLS to {node} failed: the member refused the handshake ({d}); fix: {fix}"
        ));
    }
    if access.tls.is_some() {
        if let Some(d) = detail("received corrupt message") {
            return Some(format!(
                "TLS to {node} failed: the member does not answer in TLS ({d}); fix: enable TLS on the member, or set [mongo] tls = false"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(msg: &str) -> mongodb::error::Error {
        mongodb::error::Error::from(std::io::Error::other(msg.to_owned()))
    }

    fn with_ca() -> MongoAccess {
        MongoAccess {
            tls: Some(TlsFiles {
                ca_file: Some("/etc/ssl/mongo-ca.pem".into()),
                certificate_key_file: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_hostname_mismatch_names_the_member_and_the_fix() {
        let e = io_error("invalid peer certificate: certificate not valid for name \"127.0.0.1\"; certificate is only valid for DnsName(\"db.example\")");
        let r = tls_refusal(&with_ca(), "127.0.0.1:27018", &e).unwrap();
        assert!(r.starts_with("TLS to 127.0.0.1:27018 failed"), "{r}");
        assert!(
            r.contains("db.example") && r.contains("by a name its certificate holds"),
            "{r}"
        );
    }

    #[test]
    fn an_unknown_issuer_points_at_the_ca_file() {
        let e = io_error("invalid peer certificate: UnknownIssuer");
        let r = tls_refusal(&with_ca(), "m:1", &e).unwrap();
        assert!(r.contains("/etc/ssl/mongo-ca.pem"), "{r}");
        let r = tls_refusal(
            &MongoAccess {
                tls: Some(TlsFiles::default()),
                ..Default::default()
            },
            "m:1",
            &e,
        )
        .unwrap();
        assert!(r.contains("system's CA store"), "{r}");
    }

    #[test]
    fn a_refused_handshake_suggests_a_client_certificate() {
        let e = io_error("received fatal alert: CertificateRequired");
        let r = tls_refusal(&with_ca(), "m:1", &e).unwrap();
        assert!(r.contains("tls_certificate_key_file"), "{r}");
    }

    #[test]
    fn other_errors_are_not_tls_refusals() {
        let e = io_error("connection refused");
        assert_eq!(tls_refusal(&with_ca(), "m:1", &e), None);
        let e = io_error("received corrupt message of type InvalidContentType");
        assert_eq!(tls_refusal(&MongoAccess::default(), "m:1", &e), None);
        assert!(tls_refusal(&with_ca(), "m:1", &e).is_some());
    }

    #[tokio::test]
    async fn client_options_carry_credentials_tls_and_user_options() {
        let a = MongoAccess {
            uri_options: "AUTHSOURCE=other&maxPoolSize=7".into(),
            username: Some("tail".into()),
            password: Some("pw".into()),
            ..with_ca()
        };
        let o = a
            .client_options("mongodb://h:1/?directConnection=true")
            .await
            .unwrap();
        assert_eq!(o.max_pool_size, Some(7));
        let c = o.credential.unwrap();
        assert_eq!(c.username.as_deref(), Some("tail"));
        assert_eq!(c.source.as_deref(), Some("other"));
        match o.tls {
            Some(Tls::Enabled(t)) => {
                assert_eq!(t.ca_file_path, Some("/etc/ssl/mongo-ca.pem".into()))
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{a:?}").contains("pw"));
        // Without authSource the driver's default applies (admin for SCRAM).
        let a = MongoAccess {
            username: Some("tail".into()),
            ..Default::default()
        };
        let o = a
            .client_options("mongodb://h:1/?directConnection=true")
            .await
            .unwrap();
        assert_eq!(o.credential.unwrap().source, None);
    }
}
