"""mongosim checked against pymongo, a client nobody here wrote.

Run:  MONGOSIM_BIN=target-sim/debug/mongosim python3 -m pytest -q crates/mongosim/tests/python

Every test starts its own `mongosim` process on ephemeral ports and waits on conditions
with bounded deadlines (no sleeps that paper over races).
"""

import json
import os
import subprocess
import tempfile
import time

import pytest
from pymongo import MongoClient
from pymongo.cursor import CursorType
from pymongo.errors import (AutoReconnect, ConnectionFailure, OperationFailure,
                            ServerSelectionTimeoutError)

DEADLINE = 20.0


def wait_until(check, what, timeout=DEADLINE):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling interval of a bounded wait, not a race cover


class Sim:
    def __init__(self, *args):
        binary = os.environ.get("MONGOSIM_BIN")
        if not binary:
            pytest.skip("MONGOSIM_BIN not set")
        self.dir = tempfile.TemporaryDirectory()
        layout = os.path.join(self.dir.name, "layout.json")
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--layout-json", layout, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: os.path.exists(layout) or self.proc.poll() is not None, "layout file")
        assert self.proc.poll() is None, "mongosim exited"
        with open(layout) as f:
            self.layout = json.load(f)
        self.clients = []

    def client(self, addr, **kw):
        kw.setdefault("serverSelectionTimeoutMS", 5000)
        c = MongoClient(f"mongodb://{addr}/?directConnection=true", **kw)
        self.clients.append(c)
        return c

    def mongos(self):
        return self.client(self.layout["mongos"])

    def control(self, op, **kw):
        via = self.layout["mongos"] or self.layout["shards"][0]["members"][0]
        return self.client(via).admin.command({"mongosimControl": op, **kw})

    def members(self, shard):
        return next(s["members"] for s in self.layout["shards"] if s["name"] == shard)

    def primary(self, shard):
        status = self.control("status")["nodes"]
        for n in status:
            if n["set"] == shard and n["state"] == "PRIMARY" and n["alive"] and not n["partitioned"]:
                return n["addr"]
        return None

    def close(self):
        for c in self.clients:
            c.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


@pytest.fixture
def sharded():
    sim = Sim("--sharded", "2", "--replicaset", "--nodes", "3", "--noop-interval", "100ms",
              "--election-timeout", "300ms")
    yield sim
    sim.close()


def tail(client, after=None):
    query = {} if after is None else {"ts": {"$gte": after}}
    return client.local["oplog.rs"].find(query, cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(100)


def try_next(cursor):
    """One awaitData round: a document, or None when the getMore came back empty."""
    try:
        return cursor.next()
    except StopIteration:
        assert cursor.alive, "tailable cursor died"
        return None


def cursor_ends(cursor):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            cursor.next()
        except StopIteration:
            if not cursor.alive:
                return "closed"
        except (AutoReconnect, ConnectionFailure, OperationFailure) as e:
            return repr(e)
    return None


def drain(cursor, until, what):
    """Reads from a tailable cursor until `until(entries)` holds."""
    seen = []
    end = time.monotonic() + DEADLINE
    while not until(seen):
        assert time.monotonic() < end, f"timed out waiting for {what}; saw {seen[-3:]}"
        doc = try_next(cursor)
        if doc is not None:
            seen.append(doc)
    return seen


def has_insert(_id):
    return lambda seen: any(e["op"] == "i" and e["o"].get("_id") == _id for e in seen)


def test_hello_and_list_shards(sharded):
    mongos = sharded.mongos()
    hello = mongos.admin.command("hello")
    assert hello["msg"] == "isdbgrid"
    shards = mongos.admin.command("listShards")["shards"]
    assert [s["_id"] for s in shards] == ["shard01", "shard02"]
    assert shards[0]["host"] == "shard01/" + ",".join(sharded.members("shard01"))
    for addr in sharded.members("shard01"):
        h = sharded.client(addr).admin.command("hello")
        assert h["me"] == addr and h["setName"] == "shard01"
    cfg = sharded.client(sharded.layout["config"]["members"][0]).admin.command("hello")
    assert cfg["configsvr"] == 2
    with pytest.raises(OperationFailure) as e:
        mongos.local["oplog.rs"].find_one()
    assert e.value.code == 20


def test_write_through_mongos_reaches_every_member(sharded):
    mongos = sharded.mongos()
    cursors = {a: tail(sharded.client(a)) for a in sharded.members("shard02")}
    mongos.test.c.insert_one({"_id": 1500, "v": 1})
    mongos.test.c.update_one({"_id": 1500}, {"$set": {"v": 2}})
    for addr, cur in cursors.items():
        seen = drain(cur, lambda s: any(e["op"] == "u" for e in s), f"update on {addr}")
        upd = next(e for e in seen if e["op"] == "u")
        assert upd["o"] == {"$v": 2, "diff": {"u": {"v": 2}}}
        assert upd["o2"] == {"_id": 1500}
    assert mongos.test.c.find_one({"_id": 1500})["v"] == 2


def test_tail_every_node_through_kill_and_restart(sharded):
    """Each member of shard01 in turn (the primary too) is killed and restarted while being
    tailed; the tail resumes from the last ts it delivered and sees every later write."""
    mongos = sharded.mongos()
    members = sharded.members("shard01")
    cursors = {a: tail(sharded.client(a)) for a in members}
    mongos.test.c.insert_one({"_id": 1})
    last_ts = {}
    for addr, cur in cursors.items():
        seen = drain(cur, has_insert(1), f"insert 1 on {addr}")
        last_ts[addr] = seen[-1]["ts"]
    for round_no, victim in enumerate(members):
        _id = 100 + round_no
        sharded.control("killNode", node=victim)
        assert cursor_ends(cursors[victim]), f"cursor on killed {victim} kept running"

        def write():
            try:
                mongos.test.c.insert_one({"_id": _id})
                return True
            except (OperationFailure, AutoReconnect, ConnectionFailure):
                return False  # no shard01 primary yet: an election is under way

        wait_until(write, f"write {_id} after killing {victim}")
        sharded.control("restartNode", node=victim)
        resumed = tail(sharded.client(victim), after=last_ts[victim])
        seen = drain(resumed, has_insert(_id), f"insert {_id} on restarted {victim}")
        assert seen[0]["ts"] == last_ts[victim], "resume point must be the first entry returned"
        cursors[victim] = resumed
        last_ts[victim] = seen[-1]["ts"]
        for addr in members:
            if addr != victim:
                seen = drain(cursors[addr], has_insert(_id), f"insert {_id} on {addr}")
                last_ts[addr] = seen[-1]["ts"]


def test_rollback_kills_the_cursor_on_the_old_primary(sharded):
    old = sharded.primary("shard01")
    client = sharded.client(old)
    cursor = tail(client)
    drain(cursor, lambda s: len(s) > 0, "initial entries")
    sharded.control("partition", node=old)
    client.test.c.insert_one({"_id": "lost"})
    drain(cursor, has_insert("lost"), "the un-replicated insert on the old primary")
    wait_until(lambda: sharded.primary("shard01") not in (None, old), "a new primary")
    sharded.control("heal", node=old)
    # An in-flight awaitData getMore fails with InterruptedDueToReplStateChange (11602,
    # raised by pymongo as NotPrimaryError); an idle cursor gets QueryPlanKilled (175),
    # which pymongo swallows for tailable cursors and reports as `alive == False`.
    end = time.monotonic() + DEADLINE
    outcome = None
    while outcome is None:
        assert time.monotonic() < end, "cursor survived the rollback"
        try:
            cursor.next()
        except StopIteration:
            if not cursor.alive:
                outcome = "killed"
        except OperationFailure as e:
            assert e.code in (11602, 175), e
            outcome = e.code
        except (AutoReconnect, ConnectionFailure) as e:
            outcome = repr(e)
    truth = sharded.control("groundTruth", shard="shard01")
    assert any(d["op"] == "i" and d["o"]["_id"] == "lost" for d in truth["rolledBack"])
    assert not any(d["op"] == "i" and d["o"].get("_id") == "lost" for d in truth["committed"])
    mongos = sharded.mongos()
    assert mongos.test.c.find_one({"_id": "lost"}) is None


def test_replica_set_uri_follows_failover():
    sim = Sim("--replicaset", "--nodes", "3", "--noop-interval", "100ms", "--election-timeout", "300ms")
    try:
        uri = sim.layout["shards"][0]["uri"]
        client = MongoClient(uri, serverSelectionTimeoutMS=10000)
        sim.clients.append(client)
        client.test.c.insert_one({"_id": 1})
        old = sim.primary("replset")
        # Control through a member that survives.
        other = next(a for a in sim.members("replset") if a != old)
        sim.client(other).admin.command({"mongosimControl": "killNode", "node": old})
        def write():
            try:
                client.test.c.insert_one({"_id": 2})
                return True
            except (AutoReconnect, ConnectionFailure):
                return False
        wait_until(write, "a write after failover")
        assert client.primary is not None and "%s:%d" % client.primary != old
    finally:
        sim.close()


def test_member_kinds_hello_config_and_status_shapes():
    """hello / replSetGetConfig / replSetGetStatus of a set with a hidden voter, a non-voter
    and an arbiter, read with pymongo; then the replica set URI works for a client that
    discovers the topology from hello (hidden members are not listed)."""
    sim = Sim("--replicaset", "--members", "voter,voter,hidden,nonvoter,arbiter",
              "--noop-interval", "100ms", "--election-timeout", "300ms")
    try:
        p, s, hidden, nonvoter, arbiter = sim.members("replset")
        hello = sim.client(p).admin.command("hello")
        assert hello["hosts"] == [p, s]
        assert hello["passives"] == [nonvoter]
        assert hello["arbiters"] == [arbiter]
        assert hello["setVersion"] == 1
        assert hello["isWritablePrimary"] is True
        assert set(hello["lastWrite"]) == {"opTime", "lastWriteDate", "majorityOpTime", "majorityWriteDate"}
        assert "topologyVersion" not in hello
        h = sim.client(hidden).admin.command("hello")
        assert h["hidden"] is True and h["passive"] is True and h["secondary"] is True
        a = sim.client(arbiter).admin.command("hello")
        assert a["arbiterOnly"] is True and a["secondary"] is False
        n = sim.client(nonvoter).admin.command("hello")
        assert n["passive"] is True and "hidden" not in n

        cfg = sim.client(p).admin.command("replSetGetConfig")["config"]
        assert cfg["_id"] == "replset" and cfg["version"] == 1 and cfg["protocolVersion"] == 1
        members = cfg["members"]
        assert [m["host"] for m in members] == [p, s, hidden, nonvoter, arbiter]
        assert list(members[0]) == ["_id", "host", "arbiterOnly", "buildIndexes", "hidden",
                                    "priority", "tags", "secondaryDelaySecs", "votes"]
        assert [m["votes"] for m in members] == [1, 1, 1, 0, 1]
        assert [m["priority"] for m in members] == [1.0, 1.0, 0.0, 0.0, 0.0]
        assert [m["hidden"] for m in members] == [False, False, True, False, False]
        assert [m["arbiterOnly"] for m in members] == [False, False, False, False, True]

        status = sim.client(s).admin.command("replSetGetStatus")
        assert status["set"] == "replset" and status["myState"] == 2
        assert status["majorityVoteCount"] == 3
        assert status["writeMajorityCount"] == 3
        assert status["votingMembersCount"] == 4
        assert status["writableVotingMembersCount"] == 3
        assert set(status["optimes"]) >= {"lastCommittedOpTime", "readConcernMajorityOpTime",
                                          "appliedOpTime", "durableOpTime"}
        by_name = {m["name"]: m for m in status["members"]}
        assert by_name[arbiter]["stateStr"] == "ARBITER"
        assert by_name[p]["stateStr"] == "PRIMARY"
        assert by_name[s]["syncSourceHost"] == p
        assert sum(1 for m in status["members"] if m.get("self")) == 1

        client = MongoClient(sim.layout["shards"][0]["uri"], serverSelectionTimeoutMS=10000, w="majority")
        sim.clients.append(client)
        client.test.c.insert_one({"_id": 1})
        assert client.primary is not None and "%s:%d" % client.primary == p
        assert "%s:%d" % tuple(client.address) == p
    finally:
        sim.close()


def test_scram_authentication_and_roles():
    """SCRAM-SHA-256, SCRAM-SHA-1 and the negotiated default with pymongo; a wrong password
    fails with AuthenticationFailed (18); a command outside the user's roles, or before
    authentication, with Unauthorized (13)."""
    sim = Sim("--nodes", "1", "--noop-interval", "1h",
              "--user", "tail:s3cret:read@local,clusterMonitor",
              "--user", "writer:w:readWrite@app")
    try:
        addr = sim.members("replset")[0]
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", None):
            kw = {"authMechanism": mech} if mech else {}
            c = sim.client(addr, username="tail", password="s3cret", authSource="admin", **kw)
            assert c.local["oplog.rs"].find_one() is not None, mech
            assert c.admin.command("replSetGetConfig")["config"]["_id"] == "replset"
            with pytest.raises(OperationFailure) as e:
                c.app.x.insert_one({"_id": 1})
            assert e.value.code == 13, (mech, e.value.details)
            assert "not authorized on app to execute command { insert: " in str(e.value)
        w = sim.client(addr, username="writer", password="w", authSource="admin")
        w.app.x.insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as e:
            w.local["oplog.rs"].find_one()
        assert e.value.code == 13 and "not authorized on local" in str(e.value)
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
            bad = sim.client(addr, username="tail", password="wrong", authSource="admin",
                             authMechanism=mech)
            with pytest.raises(OperationFailure) as e:
                bad.admin.command("ping")
            assert e.value.code == 18, (mech, e.value.details)
            assert "Authentication failed." in str(e.value)
        anon = sim.client(addr)
        anon.admin.command("ping")
        with pytest.raises(OperationFailure) as e:
            anon.local["oplog.rs"].find_one()
        assert e.value.code == 13 and "requires authentication" in str(e.value)
    finally:
        sim.close()


def test_tls_require_with_client_certificates():
    """requireTLS with a CA file, checked with pymongo (Python's ssl module, OpenSSL): a
    client that trusts the CA and presents a certificate it signed connects and reads the
    oplog; one without a certificate, one speaking plain TCP, and one that finds another
    name in the server's certificate do not."""
    pki = os.environ.get("MONGOSIM_TLS_DIR")
    if not pki:
        pytest.skip("MONGOSIM_TLS_DIR not set (the cargo test that runs this suite sets it)")
    ca = os.path.join(pki, "ca.pem")
    client_pem = os.path.join(pki, "client.pem")
    sim = Sim("--nodes", "1", "--noop-interval", "1h",
              "--tls-certificate-key-file", os.path.join(pki, "server.pem"),
              "--tls-ca-file", ca)
    try:
        addr = sim.members("replset")[0]
        c = sim.client(addr, tls=True, tlsCAFile=ca, tlsCertificateKeyFile=client_pem)
        c.app.x.insert_one({"_id": 1})
        assert c.local["oplog.rs"].find_one({"op": "i", "ns": "app.x"})["o"] == {"_id": 1}
        for kw in ({"tls": True, "tlsCAFile": ca}, {}):
            with pytest.raises(ServerSelectionTimeoutError):
                sim.client(addr, serverSelectionTimeoutMS=1000, **kw).admin.command("ping")
    finally:
        sim.close()
    sim = Sim("--nodes", "1", "--noop-interval", "1h",
              "--tls-certificate-key-file", os.path.join(pki, "server-wrong-name.pem"))
    try:
        addr = sim.members("replset")[0]
        with pytest.raises(ServerSelectionTimeoutError) as e:
            sim.client(addr, serverSelectionTimeoutMS=1000, tls=True,
                       tlsCAFile=ca).admin.command("ping")
        assert "mismatch" in str(e.value) or "match" in str(e.value), str(e.value)
    finally:
        sim.close()


def test_distributed_transaction_and_snapshot_session(sharded):
    """pymongo commits a transaction on both shards through mongos (two-phase commit:
    prepare, then commitTransaction with one commitTimestamp on each shard), and its
    snapshot sessions read a shard at the atClusterTime the first reply names."""
    mongos = sharded.mongos()
    coll = mongos.test.c
    with mongos.start_session() as s:
        with s.start_transaction():
            coll.insert_one({"_id": 1, "v": 1}, session=s)
            coll.insert_one({"_id": 1001, "v": 1}, session=s)
    assert sorted(d["_id"] for d in coll.find()) == [1, 1001]
    stamps = []
    for shard in ("shard01", "shard02"):
        oplog = list(sharded.client(sharded.primary(shard)).local["oplog.rs"].find())
        prepares = [e for e in oplog if e["o"].get("prepare") is True]
        commits = [e for e in oplog if "commitTransaction" in e["o"]]
        assert len(prepares) == 1 and len(commits) == 1, shard
        assert commits[0]["prevOpTime"]["ts"] == prepares[0]["ts"]
        stamps.append(commits[0]["o"]["commitTimestamp"])
    assert stamps[0] == stamps[1]

    shard = sharded.client(sharded.primary("shard01"))
    with shard.start_session(snapshot=True) as s:
        first = sorted(d["_id"] for d in shard.test.c.find(session=s))
        shard.test.c.insert_one({"_id": 2, "v": 1})
        again = sorted(d["_id"] for d in shard.test.c.find(session=s))
    assert first == again == [1]
    assert sorted(d["_id"] for d in shard.test.c.find()) == [1, 2]


def ddl_entries(sim, shard):
    """A shard's DDL entries: commands on application databases, and no-ops whose o2
    names a DDL operation."""
    oplog = sim.client(sim.primary(shard)).local["oplog.rs"].find()
    out = []
    for e in oplog:
        db = e.get("ns", "").split(".")[0]
        if e["op"] == "c" and db not in ("admin", "config", "local", ""):
            out.append(e)
        elif e["op"] == "n" and "shardCollection" in e.get("o2", {}):
            out.append(e)
    return out


@pytest.mark.parametrize("version", ["5.0", "7.0"])
def test_ddl_through_mongos_per_version(version):
    """pymongo runs DDL through mongos: on 5.0 every shard logs the drop and the rename
    alike, on 7.0 the non-primary shard marks both fromMigrate; index builds on a
    non-empty collection are two-phase; shardCollection's no-op is 6.0+."""
    sim = Sim("--sharded", "2", "--replicaset", "--nodes", "1", "--noop-interval", "1h",
              "--version", version)
    try:
        mongos = sim.mongos()
        mongos.shop.items.insert_many([{"_id": 1}, {"_id": 1500}])
        mongos.shop.items.create_index("v", name="v_1")
        mongos.shop.command("collMod", "items", validationLevel="moderate")
        mongos.admin.command("renameCollection", "shop.items", to="shop.goods")
        mongos.shop.drop_collection("goods")
        mongos.admin.command("shardCollection", "shop.orders", key={"_id": 1})
        assert mongos.config.databases.find_one({"_id": "shop"})["primary"] == "shard01"
        marked = version == "7.0"
        for shard, primary in (("shard01", True), ("shard02", False)):
            entries = ddl_entries(sim, shard)
            kinds = [next(iter(e["o"])) if e["op"] == "c" else "shardCollection"
                     for e in entries]
            expected = ["create", "startIndexBuild", "commitIndexBuild", "collMod",
                        "renameCollection", "drop"]
            if primary:
                expected += ["create"] + (["shardCollection"] if marked else [])
            assert kinds == expected, (shard, kinds)
            by_kind = {k: e for k, e in zip(kinds, entries)}
            for kind in ("renameCollection", "drop"):
                fm = by_kind[kind].get("fromMigrate", False)
                assert fm == (marked and not primary), (shard, kind)
            assert by_kind["drop"]["o2"] == {"numRecords": 1}
            assert by_kind["collMod"]["o2"]["collectionOptions_old"]["uuid"] is not None
    finally:
        sim.close()


def shop_summary(sim, shard):
    """`op ns detail [fm]` of a shard's entries on the shop database."""
    out = []
    for e in sim.client(sim.primary(shard)).local["oplog.rs"].find():
        ns = e.get("ns", "")
        if not (ns.startswith("shop.") or ns == "shop"):
            continue
        if e["op"] == "c":
            detail = next(iter(e["o"]))
        elif e["op"] == "n":
            o2 = e.get("o2", {})
            detail = o2.get("type") or next(iter(o2), "")
        else:
            detail = str(e["o"].get("_id", e.get("o2", {}).get("_id")))
        ns = "shop.<temp>" if ".system.resharding." in ns else ns
        out.append(f"{e['op']} {ns} {detail}" + (" fm" if e.get("fromMigrate") else ""))
    return out


def test_reshard_collection_and_move_primary_through_mongos():
    """pymongo runs reshardCollection and movePrimary through mongos on 7.0: the
    recipient copies into a system.resharding collection and renames it onto the
    collection (fromMigrate), the donor drops its copy (fromMigrate), the primary shard
    notifies; movePrimary clones with fromMigrate writes and the old primary notifies."""
    sim = Sim("--sharded", "2", "--replicaset", "--nodes", "1", "--noop-interval", "1h",
              "--version", "7.0")
    try:
        mongos = sim.mongos()
        mongos.shop.items.insert_many([{"_id": 1, "k": 1}, {"_id": 1500, "k": 2}])
        mongos.admin.command("reshardCollection", "shop.items", key={"k": 1})
        assert mongos.config.collections.find_one({"_id": "shop.items"})["key"] == {"k": 1}
        one = shop_summary(sim, "shard01")
        two = shop_summary(sim, "shard02")
        assert one[-4:] == ["n shop.items reshardBegin fm", "n shop.items reshardFinalOp",
                            "c shop.$cmd drop fm", "n shop.items reshardCollection"], one
        assert two[-7:] == ["c shop.$cmd create", "n shop.items reshardBegin fm",
                            "i shop.<temp> 1", "i shop.<temp> 1500",
                            "n shop.items reshardFinalOp",
                            "n shop.<temp> reshardDoneCatchUp",
                            "c shop.$cmd renameCollection fm"], two
        assert sorted(d["_id"] for d in mongos.shop.items.find()) == [1, 1500]
        with pytest.raises(OperationFailure):
            mongos.admin.command("moveCollection", "shop.items", toShard="shard01")
        mongos.shop.command("create", "settings")
        mongos.admin.command("movePrimary", "shop", to="shard02")
        assert mongos.config.databases.find_one({"_id": "shop"})["primary"] == "shard02"
        assert shop_summary(sim, "shard01")[-2:] == ["n shop movePrimary", "c shop.$cmd drop"]
        assert shop_summary(sim, "shard02")[-1] == "c shop.$cmd create fm"
    finally:
        sim.close()
