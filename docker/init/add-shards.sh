#!/usr/bin/env bash
# Adds both shards through mongos and shards an example collection on _id.
set -euo pipefail
mongosh --quiet --host mongos --port 27017 --eval "
  const have = db.adminCommand({listShards: 1}).shards.map(s => s._id);
  for (const s of ['shard01', 'shard02']) {
    if (!have.includes(s)) {
      sh.addShard(s + '/' + s + '-a:27018,' + s + '-b:27018,' + s + '-c:27018');
      print('added ' + s);
    }
  }
  sh.enableSharding('shop');
  sh.shardCollection('shop.orders', {_id: 'hashed'});
  print('shards: ' + JSON.stringify(db.adminCommand({listShards: 1}).shards.map(s => s.host)));
"
