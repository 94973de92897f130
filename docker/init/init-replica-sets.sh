#!/usr/bin/env bash
# Initiates the config server replica set and both shard replica sets, then waits until
# each has a primary. Safe to run again: an initiated set is left alone.
set -euo pipefail

initiate() {
  local host="$1" port="$2" set="$3" extra="$4"; shift 4
  local members="" i=0
  for m in "$@"; do
    members+="${members:+,}{_id: $i, host: '$m'}"
    i=$((i + 1))
  done
  mongosh --quiet --host "$host" --port "$port" --eval "
    try { rs.status(); print('$set already initiated'); }
    catch (e) { rs.initiate({_id: '$set', $extra members: [$members]}); print('$set initiated'); }
    while (!db.hello().isWritablePrimary) { sleep(500); }
    print('$set has a primary');
  "
}

initiate configsvr 27019 cfg "configsvr: true," configsvr:27019
initiate shard01-a 27018 shard01 "" shard01-a:27018 shard01-b:27018 shard01-c:27018
initiate shard02-a 27018 shard02 "" shard02-a:27018 shard02-b:27018 shard02-c:27018
