#!/usr/bin/env bash
# bench/cluster.sh BUILD_DIR: messages between two market nodes through a
# nats-server (docs/cluster.md) against plain libnats through the same
# server (bench/nats_floor.c), in one run.  Prints the floor's figures,
# the nodes' (bench/cluster_node.lua: messages per second from one node's
# sends to the other's subscriber; one-way latency as half a ping's round
# trip), and the ratio of the rates: issue 13's target is 0.5 or more.
# Knobs: BENCH_MESSAGES (100000), BENCH_SIZE (64).
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
n=${BENCH_MESSAGES:-100000}
size=${BENCH_SIZE:-64}
# shellcheck source=bench/lib.sh
. "$src/bench/lib.sh"

start_nats

echo "== plain libnats (bench/nats_floor.c)"
"$build/bench/nats_floor" "$url" "$n" "$size" 20000 | tee "$tmp/floor"
echo "== two market nodes (bench/cluster_node.lua)"
node() {
  timeout 120 "$build/market" --cluster "$url/bench" --node "$1" "$src/bench/cluster_node.lua" "$1" "$n" "$size"
}
node recv >"$tmp/recv" 2>&1 &
recv=$!
pids+=($recv)
node send >"$tmp/send" 2>&1 || { cat "$tmp/send" >&2; die "the sending node failed"; }
wait "$recv" || { cat "$tmp/recv" >&2; die "the receiving node failed"; }
cat "$tmp/recv" "$tmp/send"
floor=$(sed -n 's/^messages-per-second: \([0-9.]*\).*/\1/p' "$tmp/floor")
nodes=$(sed -n 's/^messages-per-second: \([0-9.]*\).*/\1/p' "$tmp/recv")
[ -n "$floor" ] && [ -n "$nodes" ] || die "no rate to compare"
echo "ratio (nodes / plain libnats): $(fmt %.2f "$nodes / $floor")  (target: 0.5 or more)"
