//! Topology discovery: the shard list through mongos (`listShards`) or a config server
//! (`config.shards`), and each shard's membership from its replica set's own `hello`.

use std::collections::HashMap;
use std::time::Duration;

use bson::doc;

use crate::config::redact_uri;
use crate::pipeline::ShardSpec;

/// Reads the shard list through mongos (`listShards`) or from a config server
/// (`config.shards`), then each shard's current membership from its replica set's own
/// `hello` (`hosts` and `passives` are the data-bearing members, `arbiters` vote only).
/// Hidden members do not appear in `hello`; list them in a static `[[shards]]` entry.
pub struct Discovery {
    client: mongodb::Client,
    uri: String,
    member: MemberAccess,
    sets: tokio::sync::Mutex<HashMap<String, mongodb::Client>>,
}

/// How discovery reaches shard members: the same options, credentials and TLS as the
/// tailers.
pub use quorumtail_tailer::MongoAccess as MemberAccess;

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("uri", &redact_uri(&self.uri))
            .finish()
    }
}

impl Discovery {
    /// Connects (lazily; errors surface on the first read).
    ///
    /// # Errors
    /// An unparsable URI.
    pub async fn connect(uri: &str, member: MemberAccess) -> Result<Self, String> {
        let mut opts = mongodb::options::ClientOptions::parse(uri)
            .await
            .map_err(|e| format!("{}: {e}", redact_uri(uri)))?;
        opts.app_name = Some("quorumtail-discovery".into());
        opts.server_selection_timeout = Some(Duration::from_secs(5));
        if opts.tls.is_none() {
            // `[mongo] tls` covers mongos and the config servers too, unless the discovery
            // URI says otherwise itself.
            opts.tls = member.tls_options();
        }
        let client = mongodb::Client::with_options(opts).map_err(|e| e.to_string())?;
        Ok(Discovery {
            client,
            uri: uri.to_owned(),
            member,
            sets: Default::default(),
        })
    }

    /// Shuts its driver clients down (before the runtime goes away; see
    /// [`quorumtail_tailer::close`]).
    pub async fn close(&self) {
        let sets: Vec<mongodb::Client> = self.sets.lock().await.values().cloned().collect();
        futures::future::join_all(
            std::iter::once(self.client.clone())
                .chain(sets)
                .map(quorumtail_tailer::close),
        )
        .await;
    }

    /// The config database, read with `readConcern: majority`.
    pub(crate) fn config_db(&self) -> mongodb::Database {
        self.client.database_with_options(
            "config",
            mongodb::options::DatabaseOptions::builder()
                .read_concern(mongodb::options::ReadConcern::majority())
                .build(),
        )
    }

    /// The client of the discovery URI, when it is a mongos (its hello says
    /// `msg: "isdbgrid"`, as mongos answers): full document lookups go through it.
    ///
    /// # Errors
    /// When hello cannot be run.
    pub async fn router(&self) -> Result<Option<mongodb::Client>, String> {
        let hello = self
            .client
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| format!("hello on {}: {e}", redact_uri(&self.uri)))?;
        Ok((hello.get_str("msg").ok() == Some("isdbgrid")).then(|| self.client.clone()))
    }

    /// The current shards.
    ///
    /// # Errors
    /// When neither `listShards` nor `config.shards` can be read.
    pub async fn shards(&self) -> Result<Vec<ShardSpec>, String> {
        let docs: Vec<bson::Document> = match self
            .client
            .database("admin")
            .run_command(doc! { "listShards": 1 })
            .await
        {
            Ok(reply) => reply
                .get_array("shards")
                .map_err(|e| format!("listShards reply: {e}"))?
                .iter()
                .filter_map(|b| b.as_document().cloned())
                .collect(),
            Err(e) => {
                // Not a mongos: a config server holds config.shards.
                use futures::TryStreamExt;
                let coll = self
                    .client
                    .database("config")
                    .collection::<bson::Document>("shards");
                let cursor = coll.find(doc! {}).await.map_err(|e2| {
                    format!("listShards failed ({e}) and config.shards cannot be read ({e2})")
                })?;
                cursor.try_collect().await.map_err(|e| e.to_string())?
            }
        };
        let mut out = Vec::new();
        for d in docs {
            let mut spec = shard_from_document(&d)?;
            if let Some(set) = spec.replica_set.clone() {
                match self.membership(&set, &spec.members).await {
                    Ok((members, arbiters)) if !members.is_empty() => {
                        spec.members = members;
                        spec.arbiters = arbiters;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(shard = %spec.name, error = %e, "hello of the shard's replica set failed; using config.shards")
                    }
                }
            }
            out.push(spec);
        }
        Ok(out)
    }

    /// Each database's primary shard (`config.databases`: `{_id, primary}`), read through
    /// mongos or on a config server.
    ///
    /// # Errors
    /// When `config.databases` cannot be read, or a document has no `_id` or `primary`.
    pub async fn database_primaries(&self) -> Result<HashMap<String, String>, String> {
        read_primaries(&self.client, None).await
    }

    /// The databases' primary shards, kept by the coordinator from
    /// [`Discovery::database_primaries`] and asked of the catalog on a miss (a database
    /// created since the last read). A miss that the catalog does not answer either is
    /// logged once a minute per database: that database's DDL entries are then emitted
    /// by every shard that logs them.
    pub fn primary_shards(&self) -> quorumtail_oplog::PrimaryShards {
        let client = self.client.clone();
        let misses: std::sync::Mutex<HashMap<String, std::time::Instant>> = Default::default();
        quorumtail_oplog::PrimaryShards::with_lookup(std::sync::Arc::new(move |db: &str| {
            let recent = misses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(db)
                .is_some_and(|t| t.elapsed() < MISS_MEMORY);
            if recent {
                return None;
            }
            let found = lookup_blocking(&client, db);
            if let Err(why) = &found {
                tracing::warn!(database = %db, reason = %why, "the primary shard of this database is unknown: its DDL entries are emitted by every shard that logs them (a DDL operation may appear once per shard)");
                misses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(db.to_owned(), std::time::Instant::now());
            }
            found.ok()
        }))
    }

    async fn membership(
        &self,
        set: &str,
        seeds: &[String],
    ) -> Result<(Vec<String>, usize), String> {
        let key = format!("{set}/{}", seeds.join(","));
        let client = {
            let mut sets = self.sets.lock().await;
            match sets.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let uri = format!(
                        "mongodb://{}/?replicaSet={set}&appName=quorumtail-discovery&serverSelectionTimeoutMS=3000",
                        seeds.join(",")
                    );
                    let opts = self
                        .member
                        .client_options(&uri)
                        .await
                        .map_err(|e| e.to_string())?;
                    let c = mongodb::Client::with_options(opts).map_err(|e| e.to_string())?;
                    sets.insert(key, c.clone());
                    c
                }
            }
        };
        let hello = client
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| e.to_string())?;
        Ok(members_from_hello(&hello))
    }
}

/// How long a database the catalog did not know stays unknown before it is asked again.
const MISS_MEMORY: Duration = Duration::from_secs(60);

/// Reads `config.databases` (all of it, or the one database `only`).
async fn read_primaries(
    client: &mongodb::Client,
    only: Option<&str>,
) -> Result<HashMap<String, String>, String> {
    use futures::TryStreamExt;
    let filter = match only {
        Some(db) => doc! {"_id": db},
        None => doc! {},
    };
    let docs: Vec<bson::Document> = client
        .database("config")
        .collection::<bson::Document>("databases")
        .find(filter)
        .await
        .map_err(|e| format!("config.databases cannot be read: {e}"))?
        .try_collect()
        .await
        .map_err(|e| format!("config.databases cannot be read: {e}"))?;
    let mut out = HashMap::new();
    for d in docs {
        let (Ok(name), Ok(primary)) = (d.get_str("_id"), d.get_str("primary")) else {
            return Err(format!(
                "a config.databases document without a string _id and primary: {d}"
            ));
        };
        out.insert(name.to_owned(), primary.to_owned());
    }
    Ok(out)
}

/// Asks the catalog for one database's primary shard from synchronous code (the filter),
/// blocking this worker thread for at most five seconds. Only on a multi-threaded runtime
/// (quorumtail's own): elsewhere the database stays unknown.
fn lookup_blocking(client: &mongodb::Client, db: &str) -> Result<String, String> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle =
        Handle::try_current().map_err(|_| "no runtime to ask the catalog on".to_owned())?;
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err("the catalog cannot be asked from a single-threaded runtime".to_owned());
    }
    let read = tokio::task::block_in_place(|| {
        handle.block_on(tokio::time::timeout(
            Duration::from_secs(5),
            read_primaries(client, Some(db)),
        ))
    });
    match read {
        Err(_) => Err("config.databases did not answer within 5 s".to_owned()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(mut m)) => m.remove(db).ok_or_else(|| {
            "config.databases has no such database (dropped, or never registered)".to_owned()
        }),
    }
}

/// A `config.shards` / `listShards` document: `{_id, host: "set/h1:p,h2:p"}`.
fn shard_from_document(d: &bson::Document) -> Result<ShardSpec, String> {
    let name = d
        .get_str("_id")
        .map_err(|_| "a shard without _id in config.shards".to_owned())?;
    let host = d
        .get_str("host")
        .map_err(|_| format!("shard {name} has no host in config.shards"))?;
    let (set, members) = match host.split_once('/') {
        Some((set, hosts)) => (
            Some(set.to_owned()),
            hosts.split(',').map(str::to_owned).collect(),
        ),
        None => (None, vec![host.to_owned()]),
    };
    Ok(ShardSpec {
        name: name.into(),
        replica_set: set,
        members,
        arbiters: 0,
        quorum: None,
        listed: false,
    })
}

/// Data-bearing members (`hosts` + `passives`) and the arbiter count from a `hello` reply.
fn members_from_hello(hello: &bson::Document) -> (Vec<String>, usize) {
    let list = |k: &str| -> Vec<String> {
        hello
            .get_array(k)
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut members = list("hosts");
    members.extend(list("passives"));
    (members, list("arbiters").len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_and_members_from_server_documents() {
        let s = shard_from_document(
            &doc! { "_id": "shard01", "host": "shard01/a:1,b:2,c:3", "state": 1 },
        )
        .unwrap();
        assert_eq!(
            (s.replica_set.as_deref(), s.members.len()),
            (Some("shard01"), 3)
        );
        assert!(shard_from_document(&doc! { "_id": "x" })
            .unwrap_err()
            .contains("no host"));
        let hello = doc! { "hosts": ["a:1", "b:2"], "passives": ["c:3"], "arbiters": ["d:4"], "setName": "shard01" };
        assert_eq!(
            members_from_hello(&hello),
            (vec!["a:1".to_owned(), "b:2".into(), "c:3".into()], 1)
        );
    }
}
