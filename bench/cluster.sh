#!/usr/bin/env bash
# bench/cluster.sh BUILD_DIR: messages between two market nodes through a
# nats-server (docs/cluster.md) against plain libnats through the same
# server (bench/nats_floor.c), in interleaved rounds.  The first round
# prints both in full, latency included (bench/cluster_node.lua: messages
# per second from one node's sends to the other's subscriber, each node's
# CPU per message; one-way latency as half a ping's round trip); every
# round then prints its rates and their ratio, the two taken one right
# after the other (the order turning from round to round), and the end
# the medians: the ratio's is issue 13's figure (target 0.5 or more).
# Knobs: BENCH_MESSAGES (100000), BENCH_SIZE (64), BENCH_ROUNDS (5).
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
n=${BENCH_MESSAGES:-100000}
size=${BENCH_SIZE:-64}
rounds=${BENCH_ROUNDS:-5}
# shellcheck source=bench/lib.sh
. "$src/bench/lib.sh"

start_nats

# floor OUT SAMPLES: the floor's run, its output in OUT
floor() {
  "$build/bench/nats_floor" "$url" "$n" "$size" "$2" >"$1" 2>&1 || { cat "$1" >&2; die "the floor failed"; }
}
# nodes OUT PINGS: the two nodes' run, both outputs in OUT
nodes() {
  local recv
  node recv >"$tmp/recv" 2>&1 &
  recv=$!
  pids+=($recv)
  # On a failure both nodes' outputs (warnings included) say what happened.
  node send "$2" >"$tmp/send" 2>&1 || { both; die "the sending node failed"; }
  wait "$recv" || { both; die "the receiving node failed"; }
  cat "$tmp/recv" "$tmp/send" >"$1"
}
both() { echo "-- the sending node:"; cat "$tmp/send"; echo "-- the receiving node:"; cat "$tmp/recv"; } >&2
node() {
  timeout 120 "$build/market" --cluster "$url/bench" --node "$1" "$src/bench/cluster_node.lua" \
    "$1" "$n" "$size" ${2:+"$2"}
}
field() { sed -n "s/^$1: \([0-9.]*\).*/\1/p" "$2"; }

rates_f="" rates_n="" ratios="" cpu_f="" cpu_r="" cpu_s=""
for ((r = 1; r <= rounds; r++)); do
  if ((r == 1)); then samples=20000 pings=""; else samples=100 pings=100; fi
  if ((r % 2)); then floor "$tmp/floor" $samples; nodes "$tmp/nodes" "$pings"
  else nodes "$tmp/nodes" "$pings"; floor "$tmp/floor" $samples; fi
  if ((r == 1)); then
    echo "== plain libnats (bench/nats_floor.c), round 1"
    cat "$tmp/floor"
    echo "== two market nodes (bench/cluster_node.lua), round 1"
    cat "$tmp/nodes"
  fi
  f=$(field messages-per-second "$tmp/floor")
  m=$(field messages-per-second "$tmp/nodes")
  [ -n "$f" ] && [ -n "$m" ] || die "no rate to compare in round $r"
  rates_f+=" $f" rates_n+=" $m" ratios+=" $(fmt %.3f "$m / $f")"
  cpu_f+=" $(field cpu-us-per-message "$tmp/floor")"
  cpu_r+=" $(field cpu-us-per-message "$tmp/nodes")"
  cpu_s+=" $(field sender-cpu-us-per-message "$tmp/nodes")"
  echo "round $r: plain libnats $f, nodes $m messages/s, ratio $(fmt %.3f "$m / $f")"
done
echo "== medians of $rounds interleaved rounds"
echo "floor-messages-per-second: $(median "$rates_f" %.0f)"
echo "nodes-messages-per-second: $(median "$rates_n" %.0f)"
echo "floor-cpu-us-per-message: $(median "$cpu_f" %.2f)  (publisher and subscriber in one process)"
echo "nodes-cpu-us-per-message: $(median "$cpu_s" %.2f) + $(median "$cpu_r" %.2f)  (sending node + receiving node)"
echo "ratio (nodes / plain libnats): $(median "$ratios" %.2f)  (median of the rounds' ratios:$ratios; target: 0.5 or more)"
