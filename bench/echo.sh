#!/usr/bin/env bash
# bench/echo.sh BUILD_DIR: examples/echo.lua against the floor (a plain
# single-threaded libev echo server, bench/echo_floor.c), both driven by
# the same closed-loop generator (bench/loadgen.c) on loopback.  Prints
# round trips per second for both, for 64-byte and 4 KiB messages with 50
# connections, the ratio on "echo-ratio: X" (64 bytes), 10,000 concurrent
# connections held and served by echo.lua, and the DNS example's UDP rate.
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
secs=${BENCH_SECONDS:-3}
# 10,000 connections need 10,000+ descriptors on each side: raise the soft
# limit to the hard one (20,000 here is enough).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

wait_port() { for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rate() { "$build/bench/loadgen" tcp "$1" "$2" "$3" "$secs" | sed -n 's/round-trips-per-second: //p'; }

"$build/bench/echo_floor" 46101 & pids+=($!)
"$build/market" "$src/examples/echo.lua" 46102 >/dev/null & pids+=($!)
wait_port 46101 && wait_port 46102 || { echo "bench/echo: servers did not start" >&2; exit 1; }

f64=$(rate 46101 50 64);   m64=$(rate 46102 50 64)
f4k=$(rate 46101 50 4096); m4k=$(rate 46102 50 4096)
echo "floor-64B-round-trips-per-second: $f64"
echo "echo.lua-64B-round-trips-per-second: $m64"
echo "floor-4KiB-round-trips-per-second: $f4k"
echo "echo.lua-4KiB-round-trips-per-second: $m4k"
awk -v m="$m4k" -v f="$f4k" 'BEGIN { printf "echo-ratio-4KiB: %.3f\n", m / f }'
awk -v m="$m64" -v f="$f64" 'BEGIN { printf "echo-ratio: %.3f  (target >= 0.70)\n", m / f }'

# 10,000 concurrent connections held and served (each does round trips).
"$build/bench/loadgen" tcp 46102 10000 64 $((secs * 4)) | sed 's/^/10k-connections-/'

if [ -f "$src/examples/dns.lua" ]; then
  "$build/market" "$src/examples/dns.lua" 46103 >/dev/null & pids+=($!)
  sleep 0.5
  "$build/bench/loadgen" dns 46103 32 "$secs" www.example.test | sed 's/^/dns-/'
fi
