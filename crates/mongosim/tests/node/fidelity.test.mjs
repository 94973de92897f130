// mongosim checked against the official Node.js driver (npm `mongodb`).
// Run: cd crates/mongosim/tests/node && npm install && MONGOSIM_BIN=../../../../target-sim/debug/mongosim npm test
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient, Timestamp } from "mongodb";

const DEADLINE_MS = 20000;

async function waitUntil(check, what) {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20)); // polling interval of a bounded wait
  }
}

async function startSim(args) {
  const bin = process.env.MONGOSIM_BIN;
  if (!bin) return null;
  const dir = mkdtempSync(join(tmpdir(), "mongosim-"));
  const layoutPath = join(dir, "layout.json");
  const proc = spawn(bin, ["--port", "0", "--layout-json", layoutPath, ...args], { stdio: "ignore" });
  await waitUntil(() => existsSync(layoutPath), "layout file");
  return { proc, layout: JSON.parse(readFileSync(layoutPath, "utf8")) };
}

test("tail the oplog of every member and write through mongos", { skip: !process.env.MONGOSIM_BIN }, async () => {
  const sim = await startSim(["--sharded", "2", "--replicaset", "--nodes", "3", "--noop-interval", "100ms"]);
  const clients = [];
  try {
    const mongos = new MongoClient(`mongodb://${sim.layout.mongos}/`, { serverSelectionTimeoutMS: 5000 });
    clients.push(mongos);
    const hello = await mongos.db("admin").command({ hello: 1 });
    assert.equal(hello.msg, "isdbgrid");
    const { shards } = await mongos.db("admin").command({ listShards: 1 });
    assert.deepEqual(shards.map((s) => s._id), ["shard01", "shard02"]);

    const members = sim.layout.shards[0].members;
    const cursors = [];
    for (const addr of members) {
      const c = new MongoClient(`mongodb://${addr}/?directConnection=true`, { serverSelectionTimeoutMS: 5000 });
      clients.push(c);
      const h = await c.db("admin").command({ hello: 1 });
      assert.equal(h.me, addr);
      cursors.push(
        c.db("local").collection("oplog.rs").find(
          { ts: { $gt: new Timestamp({ t: 0, i: 0 }) } },
          { tailable: true, awaitData: true, maxAwaitTimeMS: 100 },
        ),
      );
    }
    await mongos.db("test").collection("c").insertOne({ _id: 7, v: "node" });
    for (const cursor of cursors) {
      const end = Date.now() + DEADLINE_MS;
      let found = null;
      while (!found) {
        assert.ok(Date.now() < end, "insert never arrived");
        const doc = await cursor.tryNext();
        if (doc && doc.op === "i" && doc.o._id === 7) found = doc;
      }
      assert.equal(found.ns, "test.c");
      // A retryable write (the driver's default): session fields around the operation.
      assert.deepEqual(Object.keys(found), [
        "lsid", "txnNumber", "op", "ns", "ui", "o", "o2", "stmtId", "ts", "t", "v", "wall", "prevOpTime",
      ]);
      await cursor.close();
    }
  } finally {
    for (const c of clients) await c.close();
    sim.proc.kill("SIGTERM");
  }
});
