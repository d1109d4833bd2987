#!/usr/bin/env bash
# bench/footprint.sh BUILD_DIR [CONNS]: what an idle examples/echo.lua
# connection costs (issue 10; docs/performance.md, "The footprint of an idle
# connection").  echo.lua runs under BUILD_DIR/market beside a process that
# reports, every 200 ms, the heap in use, the Lua heap and the connections
# open (bench/echo_footprint.lua); `loadgen idle` opens CONNS (10,000) connections that each make one
# 64-byte round trip and stay.  Prints, per connection: resident memory
# (as bench-echo's idle-bytes-per-connection-echo.lua), heap in use, and
# the Lua heap's part of it.
set -u
build=${1:-build}
conns=${2:-10000}
src=$(cd "$(dirname "$0")/.." && pwd)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log=$(mktemp)
trap 'kill "$server" 2>/dev/null; wait 2>/dev/null; rm -f "$log"' EXIT
"$build/market" "$src/bench/echo_footprint.lua" "$src/examples/echo.lua" 200 0 $((conns + 1000)) 2>"$log" &
server=$!
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on port \([0-9][0-9]*\).*/\1/p' "$log")
  [ -n "$port" ] && grep -q 'connections 0$' "$log" && break
  sleep 0.1
done
[ -n "${port:-}" ] || { cat "$log" >&2; echo "bench/footprint: echo.lua did not start" >&2; exit 1; }
read -r _ heap0 _ lua0 _ _ < <(grep 'connections 0$' "$log" | tail -1)
out=$("$build/bench/loadgen" idle "$port" "$conns" "$server") || { echo "$out" >&2; exit 1; }
read -r _ heap1 _ lua1 _ _ < <(grep "connections $conns\$" "$log" | tail -1)
rss=$(sed -n 's/^idle-bytes-per-connection: //p' <<<"$out")
echo "idle-rss-bytes-per-connection: $rss  ($conns connections; target <= 4096)"
echo "idle-heap-bytes-per-connection: $(( (heap1 - heap0) / conns ))  (market.memory(), malloc's chunks)"
echo "idle-lua-bytes-per-connection: $(( (lua1 - lua0) / conns ))  (the Lua heap's part)"
