#!/usr/bin/env bash
# bench/workers.sh BUILD_DIR: examples/echo.lua as one process against
# `market --workers 2` (docs/workers.md), both driven by the closed-loop
# generator bench/loadgen.c on loopback, 50 connections of 64 B round
# trips.  Prints, for each, the round trips per second and the server CPU
# per round trip (every worker's, summed), then the ratio of the two
# rates: the target on a 2-core machine is 1.5 or more.  loadgen itself
# takes a core's share too, so on two cores the two workers and it compete.
#
# As in bench/echo.sh, each figure is the median of short rounds
# (BENCH_SECONDS, default 2), one server after the other in each round,
# the order turning, and the ratio is the median of the rounds' ratios.
# Knobs: BENCH_SECONDS (2), BENCH_ROUNDS (7), BENCH_CONNS (50).
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
secs=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-7}
conns=${BENCH_CONNS:-50}

# shellcheck source=bench/lib.sh
. "$src/bench/lib.sh"

# measure NAME: one loadgen run; sets m[rate], m[cpu] (the server's µs per
# round trip) and m[client] (loadgen's).
declare -A m
measure() {
  local out t0 t1 c
  kill -0 "${pid[$1]}" 2>/dev/null || die "$1 is gone (it was pid ${pid[$1]})"
  t0=$(ticks "${pid[$1]}")
  out=$(/usr/bin/time -f '%U %S' -o "$tmp/time" "$build/bench/loadgen" tcp "${port[$1]}" "$conns" 64 "$secs") ||
    echo "bench/workers: $1: $(sed -n 's/^ready: //p' <<<"$out") of $conns served" >&2
  t1=$(ticks "${pid[$1]}")
  c=$(awk '{ print $1 + $2 }' "$tmp/time")
  m[rate]=$(sed -n 's/^round-trips-per-second: //p' <<<"$out")
  m[rate]=${m[rate]:-0}
  # The CPU times cover the whole run, the ramp included (a few round
  # trips for 50 connections), the rate the measured window: close enough.
  m[cpu]=$(fmt %.2f "(${m[rate]} > 0) ? ($t1 - $t0) * 1e6 / $hz / (${m[rate]} * $secs) : 0")
  m[client]=$(fmt %.2f "(${m[rate]} > 0) ? $c * 1e6 / (${m[rate]} * $secs) : 0")
}

start_on_port one 1 "$build/market" "$src/examples/echo.lua" @PORT 20000
start_on_port two 2 "$build/market" --workers 2 "$src/examples/echo.lua" @PORT 20000

declare -A acc
servers=(one two)
for ((r = 0; r < rounds; r++)); do
  declare -A got=()
  for ((i = 0; i < 2; i++)); do
    w=${servers[(r + i) % 2]}
    measure "$w"
    acc[$w.rate]+=" ${m[rate]}"
    acc[$w.cpu]+=" ${m[cpu]}"
    acc[client]+=" ${m[client]}"
    got[$w]=${m[rate]}
  done
  acc[ratio]+=" $(fmt %.3f "(${got[one]} > 0) ? ${got[two]} / ${got[one]} : 0")"
done

echo "workers-1-round-trips-per-second: $(median "${acc[one.rate]}" %.0f)  (one process; $conns connections, 64 B)"
echo "workers-2-round-trips-per-second: $(median "${acc[two.rate]}" %.0f)  (market --workers 2)"
echo "workers-1-cpu-us-per-round-trip: $(median "${acc[one.cpu]}" %.2f)"
echo "workers-2-cpu-us-per-round-trip: $(median "${acc[two.cpu]}" %.2f)  (both workers)"
echo "client-cpu-us-per-round-trip: $(median "${acc[client]}" %.2f)  (loadgen's)"
echo "workers-ratio: $(median "${acc[ratio]}")  (--workers 2's rate / one process's; target >= 1.5; rounds:${acc[ratio]})"
# What the cores allow, estimated from the CPU costs: one process serves at
# most min(1 / its CPU per round trip, cores / (its + loadgen's)); two
# workers and loadgen share the cores, so together at most cores / (their
# CPU + loadgen's).  With the client on the same two cores this bounds the
# ratio well under 2 (a loaded machine moves every figure: the specs' rule).
s1=$(median "${acc[one.cpu]}" %.4f); s2=$(median "${acc[two.cpu]}" %.4f); c=$(median "${acc[client]}" %.4f)
n=$(nproc)
echo "workers-ratio-ceiling: $(fmt %.3f "($s1 > 0 && $s2 + $c > 0) ? ($n / ($s2 + $c)) / ((1 / $s1 < $n / ($s1 + $c)) ? 1 / $s1 : $n / ($s1 + $c)) : 0")  (an estimate of the best ratio these CPU costs allow on $n cores with loadgen on them)"
