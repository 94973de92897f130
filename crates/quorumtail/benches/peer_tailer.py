"""The peer in the end-to-end benchmark: a single-primary oplog tailer written the way
classic tools do it (pymongo, a tailable await cursor on each shard's primary, the
fromMigrate filter, one JSON document per entry), one thread per shard.

usage: peer_tailer.py EXPECTED_ENTRIES PRIMARY [PRIMARY ...]
Reads every application entry the primaries hold (no-ops skipped), then prints
`entries=<n> seconds=<s>`.
"""
import sys
import threading
import time

import pymongo
from bson import json_util

expected = int(sys.argv[1])
primaries = sys.argv[2:]
count = 0
lock = threading.Lock()
done = threading.Event()


def tail(host):
    global count
    client = pymongo.MongoClient(host, directConnection=True)
    oplog = client.local["oplog.rs"]
    cursor = oplog.find(
        {"fromMigrate": {"$exists": False}, "op": {"$ne": "n"}},
        cursor_type=pymongo.CursorType.TAILABLE_AWAIT,
        batch_size=1000,
    ).max_await_time_ms(200)
    with open("/dev/null", "w") as out:
        while cursor.alive and not done.is_set():
            for entry in cursor:
                out.write(json_util.dumps(entry))
                out.write("\n")
                with lock:
                    count += 1
                    if count >= expected:
                        done.set()
                        return


start = time.monotonic()
threads = [threading.Thread(target=tail, args=(p,), daemon=True) for p in primaries]
for t in threads:
    t.start()
done.wait(timeout=600)
print(f"entries={count} seconds={time.monotonic() - start:.3f}")
