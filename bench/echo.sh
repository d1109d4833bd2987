#!/usr/bin/env bash
# bench/echo.sh BUILD_DIR: examples/echo.lua against the floor (a plain
# single-threaded libev echo server, bench/echo_floor.c), both driven by
# the same closed-loop generator (bench/loadgen.c) on loopback.  Prints
# round trips per second for both, for 64-byte and 4 KiB messages with 50
# connections, the ratio on "echo-ratio: X" (64 bytes), 10,000 concurrent
# connections held and served by echo.lua, and the DNS example's UDP rate.
#
# Loopback rates on a shared machine swing by a third from one run to the
# next, and on a virtual machine by half within a minute (the floor's
# most: it is nearly all kernel time).  So each rate is taken in
# BENCH_ROUNDS short rounds (default 7 of BENCH_SECONDS = 2 seconds), the
# floor and echo.lua one right after the other in each round, and the
# figures are medians: of the rates, and of the rounds' ratios for
# echo-ratio (each round's ratio compares two runs made under the same
# conditions; many short rounds outvote a slow spell).
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
secs=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-7}
# 10,000 connections need 10,000+ descriptors on each side: raise the soft
# limit to the hard one (20,000 here is enough).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

wait_port() { for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rate() { "$build/bench/loadgen" tcp "$1" "$2" "$3" "$secs" | sed -n 's/round-trips-per-second: //p'; }

"$build/bench/echo_floor" 26101 & pids+=($!)
"$build/market" "$src/examples/echo.lua" 26102 >/dev/null & pids+=($!)
wait_port 26101 && wait_port 26102 || { echo "bench/echo: servers did not start" >&2; exit 1; }

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# compare SIZE NAME: BENCH_ROUNDS rounds of floor then echo.lua.
compare() {
  local fs=() ms=() rs=() f m
  for _ in $(seq "$rounds"); do
    f=$(rate 26101 50 "$1"); m=$(rate 26102 50 "$1")
    fs+=("${f:-0}"); ms+=("${m:-0}")
    rs+=("$(awk -v m="${m:-0}" -v f="${f:-0}" 'BEGIN { printf "%.3f", (f > 0) ? m / f : 0 }')")
  done
  echo "floor-$2-round-trips-per-second: $(median "${fs[@]}")"
  echo "echo.lua-$2-round-trips-per-second: $(median "${ms[@]}")"
  ratio=$(median "${rs[@]}")
  rounds_seen="${rs[*]}"
}
compare 64 64B;   r64=$ratio; s64=$rounds_seen
compare 4096 4KiB; r4k=$ratio; s4k=$rounds_seen
echo "echo-ratio-4KiB: $r4k  (rounds: $s4k)"
echo "echo-ratio: $r64  (target >= 0.70; rounds: $s64)"

# 10,000 concurrent connections held and served (each does round trips).
"$build/bench/loadgen" tcp 26102 10000 64 $((secs * 4)) | sed 's/^/10k-connections-/'

if [ -f "$src/examples/dns.lua" ]; then
  "$build/market" "$src/examples/dns.lua" 26103 >/dev/null & pids+=($!)
  sleep 0.5
  "$build/bench/loadgen" dns 26103 32 "$secs" www.example.test | sed 's/^/dns-/'
fi
