//! Users, SCRAM authentication and the minimal role model.
//!
//! ```text
//!   hello {saslSupportedMechs: "admin.u"} --> mechanisms of u
//!   saslStart {mechanism, payload: client-first}   --> {conversationId, done: false, server-first}
//!   saslContinue {payload: client-final}           --> {done: skipEmptyExchange, v=ServerSignature}
//!   [saslContinue {payload: ""}                    --> {done: true}]   (without skipEmptyExchange)
//!   every other command --> authorize(connection's user, command, $db)
//! ```
//!
//! Empty `users` (the default) means no authentication at all, as before: `saslStart` stays
//! `CommandNotFound` and every command is allowed. Commands the Rust API runs in-process
//! ([`crate::Cluster::command`]) are trusted; over the wire, `mongosimControl` needs a user
//! with `root` once users exist.
//!
//! What mongod does, and where it was looked up:
//! - `src/mongo/db/auth/sasl_scram_server_conversation.cpp` (mongodb/mongo): the
//!   client-first message is `gs2-header client-first-bare`, the user name is decoded
//!   (`=2C` -> `,`, `=3D` -> `=`), the server nonce is the client nonce followed by 18 random
//!   bytes in base64, the server-first message is `r=nonce,s=salt,i=iterations`, the auth
//!   message is `client-first-bare,server-first,client-final-without-proof`, and the
//!   server-final message `v=ServerSignature` ends the conversation at once only when the
//!   client asked for `options: {skipEmptyExchange: true}`; otherwise one more empty exchange.
//! - The driver specification `source/auth/auth.md` (mongodb/specifications): SCRAM-SHA-1's
//!   password is `hex(MD5(user ":mongo:" password))`, SCRAM-SHA-256's is `SASLprep(password)`;
//!   `hello` answers `saslSupportedMechs: "db.user"` with the user's mechanisms.
//! - `speculativeAuthenticate` in hello is not answered: a reply without it makes clients
//!   authenticate explicitly with `saslStart` (mongod's own client says so in
//!   `src/mongo/client/async_client.cpp`: "No reply could mean failed auth, or old server";
//!   the Rust driver 3.9 and pymongo do the same, checked in `tests/driver.rs` and
//!   `tests/python`).
//! - Failures answer `AuthenticationFailed` (18, "Authentication failed.") whatever went wrong,
//!   as `sasl_commands.cpp` does so that a client cannot tell an unknown user from a wrong
//!   password; commands before authentication answer `Unauthorized` (13, "command X requires
//!   authentication"), commands outside the user's roles `Unauthorized` (13, "not authorized
//!   on db to execute command { ... }").
//!
//! Iteration counts are mongod's defaults (scramIterationCount 10000, scramSHA256IterationCount
//! 15000); the salted passwords are computed once when the cluster starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};
use hmac::{KeyInit, Mac};
use rand::RngCore;
use sha2::Digest;

use crate::error::CmdError;

/// A user of the simulated deployment, stored on `admin` (the authSource every test uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUser {
    /// User name (SCRAM `n=`).
    pub name: String,
    /// Clear-text password; mongosim derives both mechanisms' credentials from it.
    pub password: String,
    /// What the user may run.
    pub roles: Vec<SimRole>,
}

impl SimUser {
    /// A user with `roles`.
    pub fn new(name: &str, password: &str, roles: Vec<SimRole>) -> SimUser {
        SimUser {
            name: name.to_owned(),
            password: password.to_owned(),
            roles,
        }
    }
}

/// A built-in role, reduced to what quorumtail and the tests exercise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimRole {
    /// Every command.
    Root,
    /// hello, replSetGetStatus, replSetGetConfig, listShards, serverStatus, getParameter.
    ClusterMonitor,
    /// find, getMore, killCursors, listCollections on this database (e.g. `local`).
    Read(String),
    /// `Read` plus insert, update, delete, create on this database.
    ReadWrite(String),
}

impl SimRole {
    /// Parses `root`, `clusterMonitor`, `read@DB`, `readWrite@DB` (the CLI's `--user`).
    ///
    /// # Errors
    /// The unknown role's text.
    pub fn parse(s: &str) -> Result<SimRole, String> {
        match s.split_once('@') {
            None if s == "root" => Ok(SimRole::Root),
            None if s == "clusterMonitor" => Ok(SimRole::ClusterMonitor),
            Some(("read", db)) if !db.is_empty() => Ok(SimRole::Read(db.to_owned())),
            Some(("readWrite", db)) if !db.is_empty() => Ok(SimRole::ReadWrite(db.to_owned())),
            _ => Err(format!(
                "unknown role '{s}' (root, clusterMonitor, read@DB, readWrite@DB)"
            )),
        }
    }

    fn allows(&self, name: &str, db: &str) -> bool {
        const MONITOR: &[&str] = &[
            "replSetGetStatus",
            "replSetGetConfig",
            "listShards",
            "serverStatus",
            "getParameter",
        ];
        const READ: &[&str] = &["find", "getMore", "killCursors", "listCollections"];
        const WRITE: &[&str] = &[
            "insert",
            "update",
            "delete",
            "create",
            "drop",
            "createIndexes",
            "dropIndexes",
        ];
        match self {
            SimRole::Root => true,
            SimRole::ClusterMonitor => MONITOR.contains(&name),
            SimRole::Read(d) => d == db && READ.contains(&name),
            SimRole::ReadWrite(d) => d == db && (READ.contains(&name) || WRITE.contains(&name)),
        }
    }
}

/// The two SCRAM variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    Sha1,
    Sha256,
}

impl Mech {
    fn parse(s: &str) -> Option<Mech> {
        match s {
            "SCRAM-SHA-1" => Some(Mech::Sha1),
            "SCRAM-SHA-256" => Some(Mech::Sha256),
            _ => None,
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mech::Sha1 => {
                let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mech::Sha256 => {
                let mut m =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mech::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Mech::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    /// The stored credentials of `user` for this mechanism, with a fresh salt.
    fn credentials(self, user: &str, password: &str) -> Creds {
        let (salt_len, iterations) = match self {
            Mech::Sha1 => (16, 10_000),
            Mech::Sha256 => (28, 15_000),
        };
        let mut salt = vec![0u8; salt_len];
        rand::thread_rng().fill_bytes(&mut salt);
        let prepared = match self {
            Mech::Sha1 => {
                let d = md5::Md5::digest(format!("{user}:mongo:{password}").as_bytes());
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            }
            // SASLprep refuses prohibited characters; mongod refuses to create such a user,
            // so the raw password is the closest stand-in for a spec that has one.
            Mech::Sha256 => stringprep::saslprep(password)
                .map(|p| p.into_owned())
                .unwrap_or_else(|_| password.to_owned()),
        };
        let salted = match self {
            Mech::Sha1 => {
                pbkdf2::pbkdf2_hmac_array::<sha1::Sha1, 20>(prepared.as_bytes(), &salt, iterations)
                    .to_vec()
            }
            Mech::Sha256 => pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(
                prepared.as_bytes(),
                &salt,
                iterations,
            )
            .to_vec(),
        };
        let client_key = self.hmac(&salted, b"Client Key");
        Creds {
            salt: B64.encode(&salt),
            iterations,
            stored_key: self.hash(&client_key),
            server_key: self.hmac(&salted, b"Server Key"),
        }
    }
}

#[derive(Debug, Clone)]
struct Creds {
    salt: String,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

#[derive(Debug)]
struct UserEntry {
    user: SimUser,
    sha1: Creds,
    sha256: Creds,
}

/// The deployment's users and counters, shared by every process of a simulation.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    users: Vec<UserEntry>,
    sasl_starts: AtomicU64,
    failures: AtomicU64,
}

impl Auth {
    pub fn new(users: &[SimUser]) -> Auth {
        Auth {
            users: users
                .iter()
                .map(|u| UserEntry {
                    user: u.clone(),
                    sha1: Mech::Sha1.credentials(&u.name, &u.password),
                    sha256: Mech::Sha256.credentials(&u.name, &u.password),
                })
                .collect(),
            ..Auth::default()
        }
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// `saslStart` commands received so far (every process of the simulation).
    pub fn sasl_starts(&self) -> u64 {
        self.sasl_starts.load(Ordering::Relaxed)
    }

    /// Authentications that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.users.iter().position(|u| u.user.name == name)
    }

    /// hello's `saslSupportedMechs` for `"db.user"`, when that user exists.
    pub fn supported_mechs(&self, request: &str) -> Option<Bson> {
        let (db, user) = request.split_once('.')?;
        if db != "admin" || self.find(user).is_none() {
            return None;
        }
        Some(Bson::Array(vec![
            Bson::String("SCRAM-SHA-1".into()),
            Bson::String("SCRAM-SHA-256".into()),
        ]))
    }

    /// Checks that the connection may run `name` on `db`.
    ///
    /// # Errors
    /// `Unauthorized` (13) before authentication or outside the user's roles.
    pub fn authorize(
        &self,
        conn: &ConnAuth,
        name: &str,
        db: &str,
        cmd: &Document,
    ) -> Result<(), CmdError> {
        const OPEN: &[&str] = &[
            "hello",
            "isMaster",
            "ismaster",
            "ping",
            "buildInfo",
            "buildinfo",
            "saslStart",
            "saslContinue",
            "endSessions",
        ];
        // Any authenticated user may manage its own sessions and transactions.
        const ANY_USER: &[&str] = &[
            "startSession",
            "refreshSessions",
            "killAllSessions",
            "commitTransaction",
            "abortTransaction",
        ];
        if !self.enabled() || conn.trusted || OPEN.contains(&name) {
            return Ok(());
        }
        let Some(user) = conn.user else {
            return Err(CmdError::new(
                13,
                "Unauthorized",
                format!("command {name} requires authentication"),
            ));
        };
        let roles = &self.users[user].user.roles;
        if ANY_USER.contains(&name) || roles.iter().any(|r| r.allows(name, db)) {
            return Ok(());
        }
        let first = cmd
            .get(name)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "1".into());
        Err(CmdError::new(
            13,
            "Unauthorized",
            format!(
                "not authorized on {db} to execute command {{ {name}: {first}, $db: \"{db}\" }}"
            ),
        ))
    }

    /// `saslStart`.
    pub fn sasl_start(
        &self,
        conn: &mut ConnAuth,
        db: &str,
        cmd: &Document,
    ) -> Result<Document, CmdError> {
        self.sasl_starts.fetch_add(1, Ordering::Relaxed);
        conn.conversation = None;
        let mech = cmd.get_str("mechanism").unwrap_or("");
        let Some(mech) = Mech::parse(mech) else {
            return Err(CmdError::new(
                334,
                "MechanismUnavailable",
                format!("Received authentication for mechanism {mech} which is not enabled"),
            ));
        };
        let payload = payload(cmd).ok_or_else(|| self.failed())?;
        let skip_empty = cmd
            .get_document("options")
            .ok()
            .and_then(|o| o.get_bool("skipEmptyExchange").ok())
            .unwrap_or(false);
        let (bare, user, client_nonce) =
            parse_client_first(&payload).ok_or_else(|| self.failed())?;
        let user = if db == "admin" {
            self.find(&user)
        } else {
            None
        };
        let Some(user) = user else {
            return Err(self.failed());
        };
        let creds = self.creds(user, mech);
        let mut server_nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={}", creds.salt, creds.iterations);
        conn.next_conversation += 1;
        let id = conn.next_conversation;
        conn.conversation = Some(Conversation {
            id,
            mech,
            user,
            nonce,
            auth_message: format!("{bare},{server_first}"),
            skip_empty,
            verified: false,
        });
        Ok(sasl_reply(id, false, server_first.as_bytes()))
    }

    /// `saslContinue`.
    pub fn sasl_continue(&self, conn: &mut ConnAuth, cmd: &Document) -> Result<Document, CmdError> {
        let id = cmd.get_i32("conversationId").ok();
        let Some(mut conv) = conn.conversation.take() else {
            return Err(CmdError::new(
                17,
                "ProtocolError",
                "No SASL session state found",
            ));
        };
        if id.is_some_and(|id| id != conv.id) {
            return Err(self.failed());
        }
        if conv.verified {
            // The empty exchange that ends a conversation without skipEmptyExchange.
            conn.user = Some(conv.user);
            return Ok(sasl_reply(conv.id, true, b""));
        }
        let payload = payload(cmd).ok_or_else(|| self.failed())?;
        let signature = self
            .verify(&mut conv, &payload)
            .ok_or_else(|| self.failed())?;
        let reply = sasl_reply(
            conv.id,
            conv.skip_empty,
            format!("v={signature}").as_bytes(),
        );
        if conv.skip_empty {
            conn.user = Some(conv.user);
        } else {
            conv.verified = true;
            conn.conversation = Some(conv);
        }
        Ok(reply)
    }

    fn creds(&self, user: usize, mech: Mech) -> &Creds {
        match mech {
            Mech::Sha1 => &self.users[user].sha1,
            Mech::Sha256 => &self.users[user].sha256,
        }
    }

    /// Checks the client-final message; the server signature in base64 when the proof holds.
    fn verify(&self, conv: &mut Conversation, client_final: &str) -> Option<String> {
        let (without_proof, proof) = client_final.rsplit_once(',')?;
        let proof = B64.decode(proof.strip_prefix("p=")?).ok()?;
        let nonce = without_proof
            .split(',')
            .find_map(|f| f.strip_prefix("r="))?;
        if nonce != conv.nonce {
            return None;
        }
        conv.auth_message.push(',');
        conv.auth_message.push_str(without_proof);
        let creds = self.creds(conv.user, conv.mech);
        let client_signature = conv
            .mech
            .hmac(&creds.stored_key, conv.auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return None;
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if conv.mech.hash(&client_key) != creds.stored_key {
            return None;
        }
        Some(
            B64.encode(
                conv.mech
                    .hmac(&creds.server_key, conv.auth_message.as_bytes()),
            ),
        )
    }

    fn failed(&self) -> CmdError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        CmdError::new(18, "AuthenticationFailed", "Authentication failed.")
    }
}

/// The SASL payload as text (drivers send BinData; the shell may send a string).
fn payload(cmd: &Document) -> Option<String> {
    match cmd.get("payload")? {
        Bson::Binary(b) => String::from_utf8(b.bytes.clone()).ok(),
        Bson::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// `n,,n=user,r=nonce` -> (client-first-bare, user, nonce).
fn parse_client_first(msg: &str) -> Option<(String, String, String)> {
    let (flag, rest) = msg.split_once(',')?;
    if flag != "n" && flag != "y" {
        return None;
    }
    let (_authzid, bare) = rest.split_once(',')?;
    let mut user = None;
    let mut nonce = None;
    for field in bare.split(',').filter(|f| !f.is_empty()) {
        if let Some(u) = field.strip_prefix("n=") {
            user = Some(u.replace("=2C", ",").replace("=3D", "="));
        } else if let Some(r) = field.strip_prefix("r=") {
            nonce = Some(r.to_owned());
        }
    }
    Some((bare.to_owned(), user?, nonce?))
}

fn sasl_reply(id: i32, done: bool, payload: &[u8]) -> Document {
    doc! {
        "conversationId": id,
        "done": done,
        "payload": Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: payload.to_vec() }),
        "ok": 1.0,
    }
}

/// One SCRAM conversation in progress.
#[derive(Debug)]
struct Conversation {
    id: i32,
    mech: Mech,
    user: usize,
    nonce: String,
    auth_message: String,
    skip_empty: bool,
    /// The proof was checked; only the final empty exchange remains.
    verified: bool,
}

/// Authentication state of one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnAuth {
    /// Index of the authenticated user.
    pub user: Option<usize>,
    /// Commands run in-process by the Rust API bypass authorization.
    pub trusted: bool,
    conversation: Option<Conversation>,
    next_conversation: i32,
}

/// A connection's auth state, shared by the handlers of that connection.
pub(crate) type ConnAuthCell = Arc<Mutex<ConnAuth>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example: user "user", password "pencil".
    #[test]
    fn rfc7677_example_proof_verifies() {
        let mech = Mech::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(b"pencil", &salt, 4096);
        let client_key = mech.hmac(&salted, b"Client Key");
        let auth = Auth {
            users: vec![UserEntry {
                user: SimUser::new("user", "pencil", vec![]),
                sha1: Mech::Sha1.credentials("user", "pencil"),
                sha256: Creds {
                    salt: "W22ZaJ0SNY7soEsUEjb6gQ==".into(),
                    iterations: 4096,
                    stored_key: mech.hash(&client_key),
                    server_key: mech.hmac(&salted, b"Server Key"),
                },
            }],
            ..Auth::default()
        };
        let mut conv = Conversation {
            id: 1,
            mech,
            user: 0,
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            auth_message: "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
            skip_empty: true,
            verified: false,
        };
        let sig = auth.verify(
            &mut conv,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(
            sig.as_deref(),
            Some("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        );
    }

    #[test]
    fn roles_parse_and_reject_unknown() {
        assert_eq!(
            SimRole::parse("read@local"),
            Ok(SimRole::Read("local".into()))
        );
        assert!(SimRole::parse("readAnyDatabase").is_err());
    }
}
