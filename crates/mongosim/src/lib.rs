//! mongosim: a MongoDB wire-protocol simulator for testing oplog tailers.
//!
//! No real mongod can run where quorumtail is tested, so every test talks to mongosim. It
//! speaks OP_MSG to unmodified drivers (the Rust `mongodb` crate, pymongo) and simulates
//! replica sets and sharded clusters laid out like `mlaunch init --sharded N --replicaset`,
//! with the faults that make oplog tailing hard: elections, rollbacks, lag, capped-oplog
//! rollover and chunk migrations. Its ground truth (what reached a majority, what was rolled
//! back) lets a checker judge what a tailer emitted.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), mongosim::SimError> {
//! use std::time::Duration;
//! let cluster = mongosim::Cluster::start(mongosim::ClusterSpec {
//!     shards: 2,
//!     nodes_per_shard: 3,
//!     base_port: 0, // ephemeral ports
//!     version: mongosim::ServerVersion::V7_0,
//!     noop_interval: Duration::from_millis(100),
//!     election_timeout: Duration::from_millis(300),
//!     ..Default::default()
//! })
//! .await?;
//! let mongos = cluster.mongos_addr();
//! let members = cluster.shard_members("shard01");
//! let primary = cluster.primary_of("shard01").unwrap();
//! cluster.partition_node(primary).await?;   // keeps taking writes for one election timeout
//! cluster.heal_node(primary).await?;        // rejoins; un-replicated entries roll back
//! let truth = cluster.committed_entries("shard01");
//! let lost = cluster.rolled_back_entries("shard01");
//! # let _ = (mongos, members, truth, lost);
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! API names: [`Cluster::start`], [`Cluster::start_with_fixture`], [`Cluster::load_fixture`],
//! [`ReplicaSet::start`] (derefs to `Cluster`); topology: `mongos_addr`, `uri`,
//! `shard_names`, `shard_members`, `config_members`, `replica_set_uri`, `primary_of`,
//! `layout`, `status`, `database_primaries`; faults: `kill_node`, `restart_node`, `partition_node`, `heal_node`,
//! `step_down`, `set_lag`, `truncate_oplog`, `move_chunk`, `add_shard`,
//! `begin_remove_shard`, `remove_shard`; membership: `ClusterSpec::members` /
//! `ReplicaSetSpec::members` ([`membership::MemberSpec`]: voter, passive, hidden,
//! non_voter, arbiter, delayed), `member_specs`, `reconfigure`, `set_sync_source`,
//! `block_replication`, `hold_step_up`, `set_commit_point_delay`, `member_commit_point`;
//! ground truth: `oplog_snapshot(addr)`,
//! `committed_entries(set)`, `rolled_back_entries(set)`, `commit_point(set)`; waiting:
//! `wait_for(timeout, predicate)`; in-process commands and load: `command(addr, doc)`,
//! `insert(ns, docs)`; `shutdown`. The same faults are an admin command
//! (`{mongosimControl: "killNode", node: "127.0.0.1:27019"}`, see [`control`]) and the
//! `mongosim` binary starts a cluster from the command line (`mongosim --help`).
//!
//! # Modules
//!
//! - [`cluster`]: the in-process API ([`Cluster`], [`ReplicaSet`]), split into the spec and
//!   layout types and the facade over the operations below.
//! - [`error`]: [`SimError`] (the control API's errors) and [`world::CmdError`] (a
//!   command's `{ok: 0, ...}` error), used by every layer.
//! - [`world`]: the simulated state under one lock, split into data (collections,
//!   modifiers), writes (oplog logging, insert/update/delete/findAndModify), sessions and
//!   transactions, replication (elections, rollback, the commit point) and sharding
//!   (chunks, migrations).
//! - `runtime` (internal): the state every task shares (the world's lock, change
//!   notifications) and the process table: binding ports, starting and stopping listeners.
//! - `ops` (internal): process-level operations shared by the API, `mongosimControl` and
//!   commands: faults, member status, shards, replica set reconfiguration.
//! - `commands` (internal): the command dispatcher and its handlers (hello and replica-set
//!   status, find, oplog tailing, writes, transactions, catalog/DDL).
//! - `server` (internal): the wire loop of a connection; [`codec`]: OP_MSG / OP_QUERY
//!   framing.
//! - [`control`]: the `mongosimControl` admin command; [`auth`]: SCRAM; [`tls`]: TLS.
//! - [`oplog`]: oplog entries and the capped oplog; [`matcher`]: filters;
//!   [`membership`]: member configurations; [`timeseries`]: time-series collections;
//!   [`bsoncolumn`]: MongoDB's BSONColumn encoding (8.0's compressed buckets);
//!   [`fixture`]: preloaded oplogs; [`version`]: per-version shapes.
//!
//! ## Layering
//!
//! Each module imports only modules on a lower line (checked by listing the `crate::`
//! paths of each module; no two modules import each other):
//!
//! ```text
//!   cluster                        the API; builds a simulation, installs server::serve
//!   server                         the wire loop of one connection
//!   commands                       dispatcher and handlers
//!   control                        mongosimControl
//!   ops                            faults, member status, shards, reconfig
//!   runtime                        shared state, process table (ports, listeners)
//!   fixture, timeseries, auth, tls
//!   world                          the simulated state
//!   membership, oplog, matcher, update_log
//!   codec, version, error          CmdError, SimError
//!   bsoncolumn                     BSONColumn binaries (no crate imports)
//! ```
//!
//! Two decisions keep it that way. Starting a process needs the wire loop, and the wire
//! loop needs the commands, some of which start processes (`replSetReconfig` adding a
//! member, `mongosimControl` `restartNode`/`addShard`): instead of `runtime` calling the
//! wire loop, [`Cluster::start`] installs `server::serve` in the shared state as the
//! handler every listener runs on an accepted connection (a function pointer), so `ops`
//! and `runtime` start listeners knowing nothing of commands. A command that kills the
//! very process answering it does not kill from inside the handler: it records the kill
//! in the connection context and the wire loop (or `Cluster::command`) carries it out
//! once the reply is written. And the error types sit in their own module at the bottom,
//! so `membership` (which validates configs with command errors) does not import the
//! `world` that stores those configs, and `tls`/`fixture` do not import `cluster`.
//!
//! # What is simulated
//!
//! - Wire: OP_MSG (kind-0 body, kind-1 sequences merged, CRC-32C verified, moreToCome
//!   honoured), OP_QUERY only for the legacy `isMaster` handshake (answered with OP_REPLY).
//!   Oversized (> 48,000,000 bytes) or malformed messages close that connection only.
//! - hello/isMaster as mongod and mongos answer it (field order from
//!   `src/mongo/db/repl/hello_response.cpp`, lists from `TopologyCoordinator::
//!   fillHelloForReplSet`): `hosts` (visible members with priority > 0), `passives` (visible
//!   data-bearing members with priority 0, voting or not), `arbiters` — hidden and delayed
//!   members in none, each list only when non-empty — setName, setVersion,
//!   isWritablePrimary/ismaster (false while a new primary drains), secondary, primary,
//!   arbiterOnly / passive, hidden, secondaryDelaySecs, me, electionId (pv1
//!   `OID::fromTerm`), `lastWrite {opTime, lastWriteDate, majorityOpTime,
//!   majorityWriteDate}` where majorityOpTime is the member's committed snapshot (its own
//!   commit point capped at what it applied) and the dates are the optimes' seconds, as
//!   `appendTimeT` writes them; limits, wire versions 9/13/17/21/25. A member removed by
//!   reconfig answers `{isWritablePrimary: false, secondary: false, info: "Does not have a
//!   valid replica set config", isreplicaset: true}`. No `topologyVersion`: drivers would
//!   switch to streaming (awaitable) hello, which is not implemented, so they poll.
//! - Member configuration (`votes` 0/1, `priority`, `hidden`, `arbiterOnly`,
//!   `secondaryDelaySecs`) at startup (`ClusterSpec::members`, `--members
//!   voter,voter,hidden,nonvoter,arbiter`), validated as `member_config.cpp` and
//!   `repl_set_config.cpp` do: at most 7 voters and 50 members, votes 0 / hidden / delayed
//!   imply priority 0, arbiters vote with priority 0, at least one electable member, unique
//!   `_id` and host, no second arbiter from 6.0 (`allowMultipleArbiters` default), no
//!   arbiter or delay in a config server set. `majorityVoteCount = voters / 2 + 1`,
//!   `writeMajorityCount = min(that, data-bearing voters)` (`_calculateMajorities`).
//!   Arbiters are processes with no oplog and no data (state ARBITER, 7). Delayed members
//!   receive entries `secondaryDelaySecs` after they were written.
//! - replSetGetConfig (`{config: {_id, version, term, members: [{_id, host, arbiterOnly,
//!   buildIndexes, hidden, priority, tags, secondaryDelaySecs, votes}], protocolVersion,
//!   writeConcernMajorityJournalDefault, settings}}`, members as `MemberConfig::toBSON`),
//!   replSetGetStatus (set, date, myState, term, syncSourceHost/Id, heartbeatIntervalMillis,
//!   majorityVoteCount, writeMajorityCount, votingMembersCount, writableVotingMembersCount,
//!   optimes {lastCommittedOpTime = the member's commit point, readConcernMajorityOpTime =
//!   its committed snapshot, appliedOpTime, durableOpTime}, members[] {_id, name, health,
//!   state, stateStr, uptime, optime, optimeDate, syncSourceHost, syncSourceId,
//!   configVersion, configTerm, self}) and replSetReconfig (`{replSetReconfig: cfg,
//!   force}`: on the writable primary unless forced; version must grow; same host keeps its
//!   `_id`; arbiterOnly cannot change; at most one voter added or removed without force
//!   (`validateSingleNodeChange`); the primary must stay electable; force adds 10,000 plus
//!   a random number below 100,000 to the version and sets the config term to -1). A new
//!   member's process starts on the given port and initial-syncs by copying its sync
//!   source's oplog and data at once; a removed member's process keeps running without a
//!   config. The same through `Cluster::reconfigure` and `{mongosimControl: "reconfig"}`.
//! - Elections count votes: only voters vote (arbiters too) and only electable members
//!   (not arbiters, priority > 0) stand; the most up-to-date electable candidate (then
//!   priority, then config order) wins if `majorityVoteCount` reachable voters are not more
//!   up to date than it; a primary steps down after one election timeout without seeing a
//!   majority of voters.
//! - The commit rule of protocol version 1 (`TopologyCoordinator::
//!   updateLastCommittedOpTimeAndWallTime` / `advanceLastCommittedOpTimeAndWallTime`): a
//!   primary's commit point moves to the newest entry held by `writeMajorityCount`
//!   data-bearing voters that have not seen a newer term than the primary's (a member
//!   following a newer primary answers with its term instead of acknowledging, as in
//!   Raft), never to an optime before the first entry of its own term (the
//!   "new primary" no-op), so entries of older terms commit only with a later entry of the
//!   current term; non-voters' copies never count. Each member keeps its own commit point:
//!   secondaries learn their sync source's (capped at their newest entry when the terms
//!   differ) and the primary's through heartbeats (ignored when the term differs from their
//!   newest entry's), both `commit_point_delay` late. Ground truth follows the primaries:
//!   an entry is in `committed_entries` once a primary's commit point passed it; entries
//!   rolled back before that are in `rolled_back_entries` only. `w: "majority"` waits for
//!   the writing primary's commit point and for the entry to be in that committed history,
//!   on the members that took the write (through mongos too), so an acknowledged write is
//!   never one the ground truth later reports rolled back.
//! - Chained replication (`set_sync_source`, `syncSourceHost`), replication blocks
//!   (`block_replication`) and a held step-up (`hold_step_up`: the elected member stays in
//!   drain mode, no "new primary" no-op, no writes, no commits, while secondaries sync from
//!   it) are the levers a test uses to script commit stories such as Raft's "figure 8"
//!   (`tests/driver.rs`, `figure_eight_entry_held_by_a_majority_is_rolled_back`).
//! - Oplog entries shaped per version (`src/mongo/db/repl/oplog_entry.idl`): 4.4+
//!   `{op, ns, ui, o, o2, fromMigrate, ts, t, v: Long(2), wall}`; updates as `$v: 1`
//!   modifiers (4.4) or `$v: 2` diffs (5.0+); "legacy" `{ts, h, v: 2, op, ns, fromMigrate,
//!   o}` as in mlaunch 2.6 transcripts. Implicit collection creation logs a `create` command.
//! - Each node has its own capped oplog (entry and/or byte bounds). Tailable + awaitData
//!   cursors on `local.oplog.rs`: getMore waits up to maxTimeMS (default 1 s) and returns an
//!   empty batch without closing the cursor; a tailable find on an empty oplog returns id 0;
//!   a cursor whose position rolled off fails with CappedPositionLost (136); a new find with
//!   `ts: {$gte: X}` after X rolled off starts at the oldest entry without error.
//! - Replication with per-node lag; elections with increasing terms (the most up-to-date
//!   reachable member wins after `election_timeout`, a "new primary" no-op opens each term);
//!   an isolated primary keeps accepting writes for one election timeout. A rejoining node
//!   whose oplog diverged rolls back to the common point: in-flight awaitData getMores fail
//!   with InterruptedDueToReplStateChange (11602) and idle cursors with QueryPlanKilled (175)
//!   — as `jstests/replsets/read_operations_during_rollback.js` shows mongod doing.
//! - Periodic no-ops (`{msg: "periodic noop"}`) after `noop_interval` of idleness.
//! - Update operators `$set`, `$unset`, `$inc`, `$push` (with `$each`, `$slice`,
//!   `$position`), `$pop`, `$pull` (by equality, by a document query, by a condition such
//!   as `{$gte: 2}`), `$pullAll` and `$addToSet` (with `$each`), on document paths and
//!   array index paths (`"a.2"`, `"a.2.b"`: created beyond the end with null padding,
//!   `$unset` of an element sets it to null), applied as mongod applies them (paths in
//!   `cmpPathsAndArrayIndexes` order) with its errors (ConflictingUpdateOperators,
//!   PathNotViable, the array operators on non-arrays, bad arguments); see
//!   `world/modifiers.rs` for the server files each rule comes from.
//! - Operator updates are logged per modification as mongod's log builders write them
//!   ([`update_log`]): from 5.0 a `$v: 2` delta with `s<field>` sub-diffs down to each
//!   updated field, created sub-documents inserted whole at their first new component,
//!   array diffs (`a: true`, `u<index>`, `s<index>`) down to an element changed by index or
//!   appended by `$push`, the whole array as an update for `$pop`, `$pull`, `$pullAll`,
//!   `$addToSet` and any other `$push`; up to 4.4 `$set`/`$unset` with dotted paths
//!   (`"a.3"` per element a `$push` appended). Replacements log the whole document.
//! - Retryable writes (a command with `lsid` + `txnNumber`, which drivers send by default)
//!   log `lsid: {id, uid}`, `txnNumber`, `stmtId` and `prevOpTime` around the operation, in
//!   `oplog_entry.idl` order; `uid` is SHA-256 of the empty user name (no authentication).
//!   Writes without a session (e.g. [`Cluster::insert`]) have the plain shape.
//! - Multi-document transactions (`autocommit: false`, commitTransaction,
//!   abortTransaction): operations are buffered and logged at commit as one
//!   `{op: "c", ns: "admin.$cmd", o: {applyOps: [...]}}` entry with the session fields, or
//!   as a `partialTxn: true` chain linked by `prevOpTime` ending in `{applyOps, count}` when
//!   longer than `max_txn_ops_per_entry`; an aborted transaction logs nothing. Its writes
//!   become visible (on every member, when it applies the committing entry) at commit.
//! - Distributed transactions: a commit through mongos of a transaction that wrote on more
//!   than one shard runs MongoDB's two-phase commit (`commands/two_phase.rs`,
//!   `world/prepared.rs`, with the server sources cited there): the first participant
//!   coordinates, its `config.transaction_coordinators` document is inserted, each
//!   participant logs its chain ending `prepare: true`, the decision (commit at the
//!   largest prepare timestamp, or abort) is written, each prepared participant logs
//!   `{commitTransaction: 1, commitTimestamp}` or `{abortTransaction: 1}` pointing at its
//!   prepare entry (retried on whichever member is primary, so after a failover in a
//!   later term), and the document is deleted; every step waits for a majority. Levers:
//!   `holdTransactionDecisions` (between prepare and decision) and `failNextPrepare`.
//! - Write concern: `w: "majority"` waits for the commit point (above), `w: N` until N
//!   data-bearing members hold the write (honouring per-node lag); `wtimeout` expiry yields
//!   a `writeConcernError` (64), a step-down while waiting yields one with 11602 (also
//!   through mongos). `w: 1` acknowledges at once. DDL commands (create, drop,
//!   dropDatabase, renameCollection, createIndexes, dropIndexes, collMod) wait for their
//!   `writeConcern` the same way, on the members that logged them, so a `w: "majority"`
//!   DDL that was acknowledged is never rolled back.
//! - 6.0+ inserts carry `o2: {_id}` (the document key; `jstests/sharding/
//!   write_oplog_document_key.js`, requires_fcv_53). A secondary that falls behind the
//!   primary's capped oplog is "too stale" and stops replicating, as mongod does.
//! - Sharding: mongos routes writes by chunks on `_id`, proxies finds (filtering orphans),
//!   refuses the `local` database (IllegalOperation 20), answers listShards; config servers
//!   answer hello with `configsvr: 2` and find on config.shards / config.chunks. moveChunk
//!   logs `fromMigrate: true` inserts on the recipient, then `fromMigrate: true` deletes on
//!   the donor; removeShard drains (`draining: true`) then removes.
//! - Time-series collections ([`timeseries`], 5.0+; 4.4 refuses the `timeseries` option as
//!   an unknown field): `create` with `timeseries: {timeField, metaField?, granularity?}`,
//!   on a member or through mongos (then on one shard), logs `{create: "system.views"}`
//!   when the database has none, `{create: "system.buckets.<coll>", clusteredIndex: true,
//!   timeseries: {timeField, metaField, granularity, bucketMaxSpanSeconds,
//!   bucketRoundingSeconds (7.0+)}}` and the view as an insert on `<db>.system.views`
//!   (`{_id, viewOn, pipeline: [{$_internalUnpackBucket: {timeField, metaField,
//!   bucketMaxSpanSeconds}}]}`). Inserts into the collection are bucket writes on
//!   `<db>.system.buckets.<coll>`: a new bucket is an `i` of `{_id, control: {version: 1,
//!   min, max}, meta, data: {<field>: {"0": v, ...}}}` holding every measurement of the
//!   command that lands in it; measurements added to an open bucket are one `u` with the
//!   `$v: 2` diff `{scontrol: {smin: {u}, smax: {u}}, sdata: {i: {<new field>: {..}},
//!   s<field>: {i: {"<n>": v}}}}`. On 8.0 buckets are compressed (BSONColumn data fields,
//!   updates as binary diffs of the columns; see "Time-series details" below). Buckets are keyed by the (normalised) meta value and
//!   close after `bucketMaxSpanSeconds` or 1000 measurements; `control.min.<time>` and the
//!   bucket `_id`'s timestamp are the time rounded down to the granularity. Retryable
//!   bucket writes carry the session fields with `stmtId` as an array when one entry logs
//!   several statements and a scalar for one (`oplog_entry.idl` `zeroOneManyStmtId`:
//!   "Serialized as appropriate depending on the array size").
//!   Inserting in a transaction fails with OperationNotSupportedInTransaction (263).
//! - Batched multi-deletes on 7.0 and 8.0 (`ServerVersion::batched_deletes`; the server
//!   batches from 6.1, `requires_fcv_61` in its tests): a `delete` with `limit: 0` that is
//!   neither retryable nor in a transaction nor a migration's logs its deletes as
//!   `{op: "c", ns: "admin.$cmd", o: {applyOps: [{op: "d", ns, ui, o: {_id}}, ...]}}`
//!   without `lsid`, `txnNumber`, `prevOpTime` or `stmtId`, one entry per 100 documents
//!   (`batchedDeletesTargetBatchDocs`' default); a batch of one document is a plain `d`.
//!   Looked up in `src/mongo/db/op_observer/op_observer_impl.cpp`
//!   (`onBatchedWriteCommit`: `prevOpTime` removed when the batch is one entry, no `lsid`
//!   without a txnNumber, `fromMigrate` of the batch), `jstests/noPassthrough/
//!   batched_multi_deletes_oplog.js` (one applyOps per batch), `jstests/noPassthrough/
//!   batched_multi_deletes.js` ("docsPerBatchDefault = 100") and the jstest "batch deletes
//!   resulting with single operations create regular delete oplog entries". Earlier
//!   versions log one `d` per document.
//! - 8.0 vectored inserts (`ServerVersion::vectored_inserts`; `world/vectored.rs` and
//!   `commands/vectored.rs` cite the server source of each detail): an `insert` of two or
//!   more documents outside a transaction is logged per shard batch (at most 500
//!   documents, `kDefaultInternalInsertMaxBatchSizeFcv80`) as one `{op: "c", ns:
//!   "admin.$cmd", o: {applyOps: [{op: "i", ns, ui, o, o2, stmtId}, ...]}}`; a retryable
//!   one carries `lsid`, `txnNumber`, `prevOpTime` and `multiOpType: 1`
//!   (`kApplyOpsAppliedSeparately`) and its statement ids on the inner operations only, a
//!   non-retryable one none of these. A batch of one document is a plain `i`; a batch
//!   holding a duplicate `_id` is inserted one document at a time. mongos cuts an ordered
//!   insert where the target shard changes and groups an unordered one per shard. That
//!   8.0 does this by default: `write_ops_exec.cpp` `insertDocumentsAtomically` groups
//!   when `featureFlagReplicateVectoredInsertsTransactionally` is enabled for the FCV;
//!   `server_parameter_insert_max_batch_size.cpp` ("For v8.0, this should be 500 if the
//!   ... feature flag is enabled, but 64 otherwise", constants named `...Fcv80` and
//!   `...Fcv70`); MongoDB's manual for the change stream insert event ("Events with the
//!   same clusterTime may not all relate to the same transaction ... Starting in MongoDB
//!   8.0, this may be true for events on any deployment", changed in 8.0) and SERVER-88826
//!   (two documents of one insert command share a `clusterTime` on 8.0 builds, closed as
//!   works as designed). The flag's own definition (`repl_server_parameters.idl`, its
//!   `default`/`version`) is not in the stored server source and was not read. Earlier
//!   versions log one `i` per document.
//! - DDL (`world/ddl.rs`, `commands/ddl.rs`), on a member or through mongos. Each entry
//!   has the `o` / `o2` of mongod's `src/mongo/db/op_observer/op_observer_impl.cpp`:
//!   create `{create: coll, <options as given>, idIndex: {v: 2, key: {_id: 1}, name:
//!   "_id_"}}` (`makeCreateCollCmdObj`; the server orders the options as
//!   `CollectionOptions::toBSON` does, mongosim as the command gave them); drop `{drop:
//!   coll}` with `o2: {numRecords}` (`onDropCollection`, `makeObject2ForDropOrRename`);
//!   renameCollection `{renameCollection: from, to, stayTemp: false, dropTarget: <UUID of
//!   the dropped target>}` with `o2: {numRecords}` only when a target was dropped
//!   (`preRenameCollection`); dropDatabase: a drop per remaining collection, then
//!   `{dropDatabase: 1}` (`onDropDatabase`); createIndexes on an empty collection: one
//!   `{createIndexes: coll, v: 2, key, name, ...}` per index (`onCreateIndex`), on a
//!   non-empty one a two-phase build `{startIndexBuild: coll, indexBuildUUID, indexes:
//!   [...]}` then `{commitIndexBuild: ...}` (`onStartIndexBuild`; 4.4's two-phase builds;
//!   the `o2: {indexes: [{indexIdent}]}` of the newest server revisions is not written);
//!   dropIndexes `{dropIndexes: coll, index: name}` with the index spec as `o2`
//!   (`onDropIndex`); collMod: the command's own fields as `o` and `o2:
//!   {collectionOptions_old: {uuid, <options before>}}` (`onCollMod`; that `uuid` leads
//!   the old options is from `CollectionOptions::toBSON` as remembered, not re-read).
//!   Through mongos, per version:
//!   - drop: every shard holding the collection logs it, the primary shard last ("The
//!     sharded collection must be dropped on the primary shard after it has been dropped
//!     on all of the other shards", `src/mongo/db/s/drop_collection_coordinator.cpp`,
//!     5.0+). From 6.0 the non-primary shards log it with `fromMigrate: true`
//!     (`sharding_ddl_util.cpp` `sendDropCollectionParticipantCommandToShards(...,
//!     fromMigrate)`; the `fromMigrate` field of `_shardsvrDropCollectionParticipant`
//!     appears in the server's IDL diff from 5.0 to 6.0); 4.4 and 5.0 log a plain drop on
//!     every shard (the 5.0-era coordinator sends the participant command without it).
//!     That 4.4 drops on every shard (its config server's drop of a sharded collection)
//!     was not re-read in the 4.4 source.
//!   - renameCollection: 4.4 refuses a sharded collection (every collection mongos
//!     routes is sharded here; the message is mongosim's). From 5.0 every shard is a
//!     participant (`rename_collection_participant_service.cpp`): it renames when it
//!     holds the source, else drops the target; the revision that marks non-primary
//!     shards `fromMigrate` ("so that change streams ... won't receive duplicate drop
//!     notifications", next to a TODO for SERVER-74719) is taken as 7.0, the 5.0-era
//!     revision has no such flag, and 6.0 is assumed to be like 5.0 — the release of that
//!     change was not pinned.
//!   - dropDatabase: each collection is dropped as above, then the primary shard drops
//!     the database, then (5.0+, `_shardsvrDropDatabaseParticipant`) every other shard
//!     that held it logs `{dropDatabase: 1}`; 4.4: the primary shard only. Newer server
//!     revisions pass `fromMigrate` to the database participant; the release that began
//!     doing so was not found, so no version marks it. Which shards receive the
//!     participant command was not read in the coordinator itself.
//!   - createIndexes, dropIndexes, collMod: the shards owning chunks, none marked
//!     (`src/mongo/s/commands/cluster_create_indexes_cmd.cpp`:
//!     `scatterGatherVersionedTargetByRoutingTable` with an empty query; dropIndexes and
//!     collMod are taken to target the same shards, through their 6.0+ coordinators too).
//!   - create (with options, or a time-series collection): the database's primary shard.
//!   - shardCollection (`{_id: 1}` only; again on a sharded collection: a no-op): the
//!     primary shard creates the collection if needed; from 6.0 it also logs `{op: "n",
//!     ns, ui, o: {msg: {shardCollection: ns}}, o2: {shardCollection: ns, shardKey,
//!     unique, numInitialChunks, presplitHashedZones}}`
//!     (`src/mongo/db/repl/change_stream_oplog_notification.cpp`
//!     `notifyChangeStreamsOnShardCollection`: the request is appended to `o2`; its
//!     fields are the change stream's `shardCollection` event description). No 4.4 or
//!     5.0 source writing that no-op was found, so those versions log none.
//!   - Databases: a database's primary shard is the first active shard unless
//!     `enableSharding` named one (`primaryShard`); `config.databases` answers
//!     `{_id, primary, partitioned (up to 5.0), version: {uuid, timestamp (5.0+),
//!     lastMod}}`. Chunks of a new collection go round-robin from the primary shard, so
//!     it owns the first one, and an insert through mongos into a new collection creates
//!     it on the primary shard first (outside transactions): the primary shard holds
//!     every collection of its database, as an unsharded collection lives there and
//!     shardCollection creates a sharded one there. A removed shard's databases move to
//!     the first active shard (the server waits for a `movePrimary` instead).
//! - Resharding (`world/resharding.rs`, `commands/resharding.rs`), through mongos:
//!   `reshardCollection` from 5.0, `moveCollection` and `unshardCollection` on 8.0 (older
//!   versions answer CommandNotFound 59), which the server runs as resharding operations.
//!   Participants: the donors (shards owning chunks) and one recipient (the `toShard`;
//!   for reshardCollection mongosim picks the last active shard and gives the new key a
//!   single chunk `[MinKey, MaxKey)` there, where the server spreads `numInitialChunks`
//!   over the shards). Each shard logs, in order
//!   (`src/mongo/db/s/resharding/resharding_donor_service.cpp`,
//!   `resharding_recipient_service.cpp`, `resharding_data_copy_util.cpp`,
//!   `resharding_oplog_application.cpp`, `resharding_change_event_o2_field.idl`):
//!   - recipient: `create` of `<db>.system.resharding.<source collection UUID>`
//!     (`constructTemporaryReshardingNss`), whose UUID is the resharding operation's
//!     (`ensureTemporaryReshardingCollectionRenamed` checks "a UUID matching the
//!     resharding operation");
//!   - each donor: `{op: "n", ns, ui, o: {msg: "Created temporary resharding
//!     collection"}, o2, fromMigrate: true}` with `o2: {reshardBegin: ns,
//!     reshardingUUID}` (`ReshardBeginChangeEventO2Field`) from 6.0 and the legacy
//!     `{type: "reshardBegin", reshardingUUID}` on 5.0 (the server's change-stream
//!     tests keep both formats, `TransformReshardBeginLegacyFormat`; that 6.0 is the
//!     first release of the new format is inferred from the legacy filter's "remove
//!     after 7.0" note, not pinned);
//!   - recipient: the cloner's plain inserts (no `fromMigrate`,
//!     `resharding::data_copy::insertBatch` → `collection_internal::insertDocuments`)
//!     into the temporary collection; then the oplog applier's plain writes there for
//!     the donors' writes made meanwhile (`ReshardingOplogApplicationRules`: inserts
//!     with `fromMigrate: false`, replacement updates, deletes by `_id`). mongosim
//!     applies them at the cut-over as inserts, whole-document replacements and deletes
//!     (a simplified copy: the server applies each donor entry as it arrives and logs
//!     updates as it applies them);
//!   - writes through mongos keep going to the donors under the old chunks meanwhile;
//!     each carries `destinedRecipient: <shard>`, the shard owning the document under
//!     the new key (`oplog_entry.idl`: "Only included when a resharding operation is in
//!     progress", between `needsRetryImage` and `stmtId`);
//!   - each donor, at the critical section: one `{op: "n", ns, ui, o: {msg: "Writes to
//!     <ns> are temporarily blocked for resharding."}, o2: {type: "reshardFinalOp",
//!     reshardingUUID}, destinedRecipient}` per recipient
//!     (`_writeTransactionOplogEntryThenTransitionToBlockingWrites`);
//!     newer revisions carry `reshardBlockingWrites: ns` in that `o2` too
//!     (`ReshardBlockingWritesChangeEventO2Field`; the first release was not pinned, so
//!     no version writes it here);
//!   - recipient: `{op: "n", ns: <temporary ns>, o: {msg: "The temporary resharding
//!     collection now has a strictly consistent view of the data"}, o2:
//!     {reshardDoneCatchUp: <temporary ns>, reshardingUUID}}` (6.0+; 5.0 `{type:
//!     "reshardDoneCatchUp", reshardingUUID}`, same inference as `reshardBegin`);
//!   - the catalog commits: `config.collections` gets the new `key` (and `unsplittable:
//!     true` after moveCollection / unshardCollection), `config.chunks` the new chunk;
//!   - recipient: `renameCollection` of the temporary collection onto `ns` with
//!     `dropTarget` (the old collection's UUID when the recipient was also a donor),
//!     marked `fromMigrate` (`RenameCollectionOptions::markFromMigrate`); the renamed
//!     collection keeps the resharding UUID;
//!   - donors that are not the recipient: `{drop: coll}` marked `fromMigrate`
//!     (`ensureCollectionDropped`: `dropCollectionEvenIfSystem(..., markFromMigrate
//!     true)`); a donor that is also the recipient drops nothing (its rename replaced
//!     the collection, `_dropOriginalCollectionThenTransitionToDone`). The 5.0-era
//!     revision of `resharding_data_copy_util.cpp` drops without the flag, so 5.0 logs
//!     the drop and the rename unmarked;
//!   - the database's primary shard, 6.0+: `{op: "n", ns, ui: <old UUID>, o: {msg:
//!     "Reshard collection <ns> with shard key <key>"}, o2: {reshardCollection: ns,
//!     reshardUUID, shardKey, oldShardKey, unique, numInitialChunks?}}`
//!     (`reshard_collection_coordinator.cpp`, later
//!     `change_stream_oplog_notification.cpp`
//!     `notifyChangeStreamsOnReshardCollectionComplete`). On 8.0 `o2` also carries
//!     `provenance` (`reshardCollection`, `moveCollection`, `unshardCollection`): the
//!     8.0-era jstest `reshard_collection_event.js` expects it in the change event's
//!     `operationDescription`, which change streams build from this `o2`; the revision
//!     of the notification code that was read does not show the line appending it, so
//!     its place in `o2` is inferred from that test.
//!
//!   `{mongosimControl: "holdResharding"}` / `Cluster::hold_resharding` keeps every
//!   operation between its clone and its cut-over, so that a test writes while the
//!   collection is being resharded. Not simulated: `destinedRecipient` inside
//!   transactions' `applyOps`, retryable-write history cloning (`$sessionMigrateInfo` no-ops), conflict stash and
//!   oplog buffer collections on the recipients (`config.localReshardingOplogBuffer.*`,
//!   `config.localReshardingConflictStash.*`), zones, aborts, and failovers during the
//!   operation.
//! - `movePrimary` (all versions, through mongos): the new primary shard clones the
//!   database's unsharded collections with the cloner (`src/mongo/db/cloner.cpp`:
//!   `insertDocument(..., fromMigrate true)`, so `fromMigrate` inserts; the `create` is
//!   marked `fromMigrate` here too, which was not confirmed in the cloner's source),
//!   `config.databases` moves the database, then from 7.0 the old primary logs `{op: "n",
//!   ns: <db>, o: {msg: {movePrimary: <db>}}, o2: {movePrimary: <db>, from, to}}`
//!   (`move_primary_coordinator.cpp` → `notifyChangeStreamsOnMovePrimary`; the 7.0-era
//!   coordinator's error codes 71202xx place it there; earlier releases log no
//!   notification) and drops its copies with plain `drop` commands
//!   (`dropStaleDataOnDonor` runs `{drop: coll}` through `DBDirectClient`; only a later
//!   revision passes `fromMigrate`). The 4.4-6.0 movePrimary (no coordinator) was not
//!   read: mongosim logs the same clone and drop there, without the notification.
//! - findAndModify (`query`, `update` document or `remove`, `new`, `upsert`; through
//!   mongos by `_id` or on each shard until one matches). A retryable one logs its image
//!   per version (`ServerVersion::retry_images_in_side_collection`; mongodb/mongo
//!   `src/mongo/db/repl/README.md`: no-op images by default up to 5.0, the side
//!   collection from 5.1; `src/mongo/db/op_observer/op_observer_impl.cpp` `replLogUpdate`
//!   / `replLogDelete`): up to 5.0 an `{op: "n", ns, ui, o: <image>}` entry carrying the
//!   write's session fields (`lsid`, `txnNumber`, `stmtId`, the same `prevOpTime`), then
//!   the update/delete with `preImageOpTime` or `postImageOpTime` (the no-op's optime);
//!   from 6.0 here the update/delete carries `needsRetryImage: "preImage" | "postImage"`
//!   and the image is written to `config.image_collection` without an oplog entry
//!   (`namespace_string.cpp` `isImplicitlyReplicated`: secondaries write it themselves).
//!   Fields in `oplog_entry.idl` order (`o2`, `preImageOpTime`, `postImageOpTime`,
//!   `needsRetryImage`, `stmtId`, ...). Not simulated: the extra oplog slot mongod
//!   reserves for a forged no-op with side-collection images (a gap in `ts`), `sort`,
//!   `fields`, `arrayFilters`, pipeline updates (refused by name), and answering a retry
//!   with the stored image (a retry after failover returns a null `value`).
//! - Reads on a secondary need a non-primary `$readPreference` (else 13435
//!   NotPrimaryNoSecondaryOk); writes on a secondary fail with NotWritablePrimary (10107).
//!
//! # What is not
//!
//! Batched deletes are cut by document count only: the server also cuts a batch after
//! `batchedDeletesTargetBatchTimeMS` (5 ms) or `batchedDeletesTargetStagedDocBytes`, so
//! real batches can be smaller. Vectored inserts are cut by document count (500) only, not
//! by size; a vectored insert's inner operations carry no `destinedRecipient` during
//! resharding. Newer server revisions than 8.0 also mark a batch that fits one storage
//! transaction `multiOpType: 2` (`kApplyOpsAppliedAtomically`, a later jstest's "Expected
//! atomically-applied applyOps (multiOpType 2)"); 8.0's `oplog_entry.idl` knows only 0 and
//! 1, so mongosim writes 1.
//!
//! Time-series details: compressed buckets. 8.0 writes every new bucket compressed
//! (`src/mongo/db/timeseries/README.md`: "Starting in 8.0, newly created buckets will be V2
//! by default", "New V1 buckets will no longer be created in 8.0+"), and so does mongosim
//! with `[server] version` 8.0 ([`timeseries::compressed`], [`bsoncolumn`]): the insert is
//! `{_id, control: {version: 2, min, max, count}, meta, data: {<field>: BinData(7,
//! <BSONColumn>)}}` (`timeseries_write_util.cpp` `makeNewDocument` and
//! `bucket_compression.cpp` `compressBucket`: the batch's measurements sorted on time, the
//! time column first, a missing field a skip) and measurements added to it are one update
//! whose `$v: 2` diff is `{scontrol: {u: {count: N, version: 3?}, smin: {u: {..}}, smax:
//! {u: {..}}}, sdata: {i: {<new field>: BinData(7)}, b: {<field>: {o: <byte offset>, d:
//! BinData(0, <bytes from there>)}}}}`, `version: 3` when the batch's earliest measurement
//! is earlier than the last one in the bucket (`makeTimeseriesCompressedDiffUpdateOp` and
//! `makeTimeseriesCompressedDiffEntry`, behind `featureFlagTimeseriesAlwaysUseCompressedBuckets`;
//! the builders kept per open bucket as `bucket_catalog/measurement_map.cpp` keeps them).
//! The columns are written by [`bsoncolumn`], a reimplementation of MongoDB's
//! `BSONColumnBuilder` (`src/mongo/bson/column/`) checked against the server's own test
//! vectors: the Simple-8b words of `simple8b_test.cpp`, cases of `bsoncolumn_test.cpp`
//! (scalar runs per type, double scaling and rescaling, skips, RLE, interleaved runs), its
//! invariant that `intermediate()` diffs rebuild the `finalize()` binary, the expected
//! diff of `timeseries_write_util_test.cpp` `MakeTimeseriesCompressedDiffUpdateOp`, the
//! compressed bucket and update of `jstests/change_streams/timeseries.js`, and columns the
//! server wrote in other tests (all byte for byte).
//! Measurement fields that are sub-documents or arrays are compressed in BSONColumn's
//! interleaved mode (checked against that file's interleaved cases). A measurement
//! holding MinKey or MaxKey, which the column builder refuses (the server then fails the
//! write as a bucket compression failure), is refused with BadValue naming the field.
//! 5.0-7.0 write version 1 buckets as described above. Those releases may
//! also compress a bucket of more than one measurement when it closes, as a replacement
//! update (`write_commands.cpp` `_performTimeseriesBucketCompression`, behind
//! `featureFlagTimeseriesBucketCompression`, whose default per release was not found in
//! the stored source); mongosim does not, and quorumtail emits bucket writes unchanged
//! either way. Also not simulated: the
//! path of a time-series `create` through a 7.0+ mongos (the shard's DDL coordinator;
//! mongosim logs on the shard what a replica set logs); the buckets collection's `validator` (a `$jsonSchema`
//! mongod adds to the `create`; not looked up, left out); the order of the columns in
//! `data` and in `sdata` (mongod iterates a hash map; mongosim uses first appearance);
//! per-sub-field min/max of sub-document measurements (compared whole here); bucket size
//! limits and reopening closed buckets; time-series collections sharded by meta/time
//! (mongos sends everything to one shard), and reads of the view (`find` on the
//! time-series collection returns nothing unpacked); a measurement without a date in
//! the time field ends the insert even when it is unordered.
//!
//! x.509 authentication and `allowTLS`/`preferTLS` modes, compression, read-only
//! transaction participants, coordinator failover (the step that was running is retried on
//! the new primary rather than recovered from the coordinator document), transaction
//! isolation (reads and writes inside a transaction see committed data only, not the
//! transaction's own writes), prepare conflicts, aggregation, index use by queries and index
//! builds that fail (`abortIndexBuild`), DDL coordinators' own bookkeeping writes
//! (`config.system.sharding_ddl_coordinators`, critical sections) and the 6.0+
//! `createDatabase`/`enableSharding` notification no-ops, cross-database renames,
//! `$regex` and most query operators, positional update paths (`$`, `$[]`, `$[id]`),
//! `$push` with `$sort`, the other update operators (`$rename`, `$min`, `$max`, `$mul`,
//! `$bit`, `$currentDate`, `$setOnInsert`), pipeline updates and the `l` (new length) of
//! their computed diffs, `$addToSet` adding to an existing array from 6.0 (5.0's
//! `addtoset_node_test.cpp` logs the whole array, the newest source only the appended
//! elements, and the release that changed it is not established: refused with an error),
//! collations, a `$unset` of an array element that already holds null (mongod logs it,
//! the simulator writes no entry for an update that changes nothing),
//! member tags and `buildIndexes: false`, awaitable hello / `topologyVersion`, heartbeats
//! as messages (members see each other's state directly; the primary counts a voter's copy
//! while that voter's oplog holds the entry, where mongod uses its last reported optime),
//! automatic sync-source selection by ping (secondaries sync from the primary unless told
//! otherwise), priority takeover and catch-up, `newlyAdded` members, the config-commitment
//! wait of safe reconfig, member reordering by reconfig (members keep their first order),
//! `j`/tag write concerns, read
//! concern, causal consistency, change streams, exhaust cursors, cursor idle timeouts, and
//! the balancer (chunks move only when asked). A rollback restores documents by copying the
//! sync source's data rather than by refetching; a stepped-down primary keeps its
//! connections open (4.2+). The "legacy" (2.6) shape applies to entries only: elections
//! still log "new primary" and idle primaries periodic no-ops, which 2.6 never wrote (set
//! `noop_interval` to zero when replaying 2.6 fixtures). Ground truth (`committed_entries`) grows without bound: cap the
//! oplogs and keep simulations short-lived.
//!
//! # Where behaviour was looked up
//!
//! mongodb/mongo: `src/mongo/db/repl/hello_response.cpp` and `hello/hello_response.cpp`
//! (field order, `addHost`/`addPassive`/`addArbiter`), `src/mongo/db/repl/
//! topology_coordinator.cpp` (`fillHelloForReplSet`, `updateLastCommittedOpTimeAndWallTime`,
//! `advanceLastCommittedOpTimeAndWallTime`, `processWinElection`,
//! `completeTransitionToPrimary`, `_getUnelectableReason`), `replication_coordinator_impl.cpp`
//! (hello's lastWrite from `_currentCommittedSnapshot`; the drain-mode "report that we are
//! secondary"; `incrementConfigVersionByRandom` for force reconfig, read in the 3.6
//! version; the cap of the committed snapshot at lastApplied (`_recalculateStableOpTime`)
//! was read through a summary, not in its body), `replication_coordinator_impl_heartbeat.cpp`
//! (commit point by heartbeat, `fromSyncSource = false`), `repl_set_config.cpp`
//! (`_validate`, `_calculateMajorities`, `_initializeConnectionString`), `member_config.cpp`
//! (member rules, `toBSON`), `repl_set_config_checks.cpp` (`validateArbiterPriorities`,
//! `validateSingleNodeChange`, `validateOldAndNewConfigsCompatible`),
//! `jstests/replsets/disable_multiple_arbiters.js`; not verified: the config term -1 after
//! a force reconfig, `secondaryDelaySecs` in hello as an int when it fits
//! (`appendNumber`), hello of an arbiter (lastWrite with a null optime, no
//! majorityOpTime), and replSetGetStatus field order (from mongosh output, not the source);
//! `src/mongo/db/repl/oplog_entry.idl`,
//! `jstests/replsets/read_operations_during_rollback.js`, `jstests/core/tailable_*`,
//! `jstests/sharding/write_oplog_document_key.js`; time-series:
//! `src/mongo/db/timeseries/README.md` (bucket schema, versions 1-3),
//! `src/mongo/db/timeseries/timeseries_write_util.cpp` (`makeNewDocument`,
//! `makeTimeseriesUpdateOpEntry`, `processTimeseriesMeasurements`: the 7.0-era uncompressed
//! version; an older revision building the diff from `bucketMin`/`bucketMax` has the same
//! shape, and mongosim uses it for 5.0 and 6.0 too),
//! `src/mongo/db/timeseries/minmax.cpp` (`MinMax::_appendUpdates`),
//! `src/mongo/db/timeseries/timeseries_options.cpp` (`generateViewPipeline`, granularity
//! spans and rounding), `src/mongo/db/catalog/create_collection.cpp` (`_createTimeseries`:
//! system.views, buckets collection, view, in that order; "Cannot insert into a time-series
//! collection in a multi-document transaction"), `src/mongo/db/catalog/collection_options.cpp`
//! (`appendBSON` option order), `src/mongo/db/op_observer/fallback_op_observer.cpp`
//! (`onInserts` on `system.views`: views replicate as inserts; the `_id`, `viewOn`,
//! `pipeline` field order of the view document is not verified);
//! `src/mongo/s/commands/strategy.cpp`
//! ("Can't use 'local' database through mongos"), `src/mongo/db/exec/collection_scan.cpp`
//! (CappedPositionLost wording); not verified: `t: -1` on the "initiating set" entry;
//! mongodb/specifications: `source/message/OP_MSG.md`,
//! `source/server-discovery-and-monitoring/server-discovery-and-monitoring.md`,
//! `source/find_getmore_killcursors_commands/find_getmore_killcursors_commands.md`;
//! and the mlaunch sharded-cluster transcript behind `mlaunch-fixtures/sharded-migration`.
//!
//! Authentication ([`auth`]): SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) as
//! mongodb/mongo `src/mongo/db/auth/sasl_scram_server_conversation.cpp` and
//! `src/mongo/db/auth/sasl_commands.cpp` run them, with the password digests of
//! mongodb/specifications `source/auth/auth.md` (SCRAM-SHA-1: `hex(MD5(user:mongo:pwd))`;
//! SCRAM-SHA-256: SASLprep). Users are optional per cluster; without them nothing changes.
//!
//! TLS ([`tls`]): `requireTLS` on every process with a server certificate, optionally a CA
//! file that client certificates must chain to (as mongod's `--tlsCAFile`), checked with
//! the Rust driver (rustls) and pymongo (OpenSSL).

pub mod auth;
pub mod bsoncolumn;
pub mod cluster;
pub mod codec;
pub(crate) mod commands;
pub mod control;
pub mod error;
pub mod fixture;
pub mod matcher;
pub mod membership;
pub mod oplog;
mod ops;
mod runtime;
mod server;
pub mod timeseries;
pub mod tls;
pub mod update_log;
pub mod version;
pub mod world;

pub use auth::{SimRole, SimUser};
pub use cluster::{
    Cluster, ClusterSpec, Layout, NodeStatus, ProcessInfo, ReplicaSet, ReplicaSetSpec, SetLayout,
};
pub use error::SimError;
pub use tls::TlsSpec;
pub use version::ServerVersion;
