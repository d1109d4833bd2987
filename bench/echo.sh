#!/usr/bin/env bash
# bench/echo.sh BUILD_DIR: examples/echo.lua against the floor (a plain
# single-threaded libev echo server, bench/echo_floor.c) and against a
# cqueues coroutine-per-connection server (bench/echo_cqueues.lua), all
# three driven by the same closed-loop generator (bench/loadgen.c) on
# loopback.  docs/performance.md explains every line it prints:
#
#   - at 50 connections, 64 B and 4 KiB: each server's round trips per
#     second, and echo.lua's ratios to the floor and to cqueues, of rates
#     and of CPU per round trip;
#   - one row per connection count (50, 500, 1,000, 10,000) and size with
#     every server's rate and CPU per round trip, both pairs of ratios,
#     and every server's user CPU per round trip;
#   - the latency percentiles (p50, p99, p999) of every server at 1 and 50
#     connections, and echo.lua's p999 over the floor's (at one connection
#     every server is timed in the same window, their round trips in turn,
#     on one CPU);
#   - each server's resident memory per idle connection, 10,000 held;
#   - the DNS example's UDP rate, alone and while clients flood it with
#     empty TCP frames.
#
# Loopback rates on a shared machine swing by a third from one run to the
# next, and on a virtual machine by half within a minute (the floor's
# most: it is nearly all kernel time).  So each figure is taken in short
# rounds (BENCH_SECONDS, default 2, each), every server once per round,
# one right after the other (the order turning each round), and the
# figures are medians: of the rates, and of the rounds' ratios (each
# round's ratio compares runs made under the same conditions; many short
# rounds outvote a slow spell).  The CPU a server spends per round trip
# (read from /proc by loadgen over the same window) is steadier still:
# every server runs flat out, so the ratio of CPU costs is the ratio the
# rates would show on a quiet machine.
#
# Knobs: BENCH_SECONDS (2), BENCH_ROUNDS (7: the 50-connection figures),
# BENCH_SCALE_ROUNDS (5: the rows at 500, 1,000 and 10,000 connections),
# BENCH_LATENCY_ROUNDS (5: one connection, each round BENCH_SECONDS of
# round trips in turn), BENCH_IDLE_CONNS (10000).
# The whole run takes about six minutes.
#
# To compare two versions of market on the rows that matter to a change:
# BENCH_ROWS="1000x64 10000x64" runs only those rows (CONNSxSIZE, each
# BENCH_SCALE_ROUNDS rounds; nothing else), and BENCH_BASE=DIR adds a
# fourth server, DIR/market (another build, of main say) running the same
# examples/echo.lua, measured in the same rounds as the others; each row
# then has `echo/base rate R cpu C user U`: this build's rate over the
# base's, and the base's CPU per round trip (all of it, then its user
# part) over this build's (above 1: this build is cheaper), medians of the
# rounds' ratios.
#
# Every row ends with each server's user CPU per round trip (`| user
# floor F echo.lua E ...`): the part of the CPU that is the server's own
# code (the floor's is the cost of entering and leaving its two system
# calls, which the others pay too).  The kernel's part moves with how the
# wake-ups batch, by a quarter from one run to the next here; the user
# part is where echo.lua and the floor differ.
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
secs=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-7}
scale_rounds=${BENCH_SCALE_ROUNDS:-5}
latency_rounds=${BENCH_LATENCY_ROUNDS:-5}
idle_conns=${BENCH_IDLE_CONNS:-10000}
only_rows=${BENCH_ROWS:-}
base=${BENCH_BASE:-}
# 10,000 connections need 10,000+ descriptors on each side: raise the soft
# limit to the hard one (20,000 here is enough).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/lib.sh
. "$src/bench/lib.sh"

fds() { local f=("/proc/$1/fd/"*); echo "${#f[@]}"; }

# start NAME COMMAND...: runs a server that says "listening on port N" on
# stderr once it listens (every one here asks the kernel for a port);
# sets pid[NAME], port[NAME] and fds0[NAME] (its descriptors then).
declare -A pid port fds0
start() {
  local name=$1 log="$tmp/$1.log" p
  shift
  # The log exists before the server does: the background shell creates it
  # only when it runs, and the first look below may come sooner.
  : >"$log"
  "$@" >/dev/null 2>"$log" &
  pids+=($!)
  pid[$name]=$!
  for _ in $(seq 100); do
    p=$(sed -n 's/.*listening on port \([0-9][0-9]*\).*/\1/p' "$log")
    if [ -n "$p" ]; then port[$name]=$p; fds0[$name]=$(fds "${pid[$name]}"); return; fi
    kill -0 "${pid[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  die "$name did not start"
}
stop() { kill "${pid[$1]}" 2>/dev/null; wait "${pid[$1]}" 2>/dev/null; }

# settle NAME: waits (up to a minute) until server NAME has closed the
# connections of the runs before: echo.lua takes a second or more to end
# 10,000 sessions, and a run that starts meanwhile measures that too.
settle() {
  local n
  for _ in $(seq 600); do
    n=$(fds "${pid[$1]}")
    [ "$n" -le $((fds0[$1] + 16)) ] && return
    sleep 0.1
  done
  echo "bench/echo: $1 still holds $n descriptors a minute after its clients went" >&2
}

servers=(floor echo.lua)
start floor "$build/bench/echo_floor" 0
# (echo.lua takes 1,000 connections by default: the 10,000 below need more.)
start echo.lua "$build/market" "$src/examples/echo.lua" 0 20000
if lua5.4 -e 'require "cqueues"' 2>/dev/null; then
  cq=1
  servers+=(cqueues)
  start cqueues lua5.4 "$src/bench/echo_cqueues.lua" 0
else
  cq=0
  echo "cqueues: not installed (apt-get install lua-cqueues); its figures are left out"
fi
if [ -n "$base" ]; then
  [ -x "$base/market" ] || die "BENCH_BASE: no $base/market"
  servers+=(base)
  start base "$base/market" "$src/examples/echo.lua" 0 20000
fi

# ratio A B: A / B, 0 when B is 0 (a run that made no round trip).
ratio() { fmt %.3f "($2 > 0) ? $1 / $2 : 0"; }

# measure NAME CONNS SIZE: one loadgen run against server NAME; sets
# m[rate], m[cpu] (µs per round trip), m[user] (the user part of m[cpu]),
# m[p50], m[p99], m[p999] (µs).
declare -A m
measure() {
  local out
  kill -0 "${pid[$1]}" 2>/dev/null || die "$1 is gone (it was pid ${pid[$1]})"
  settle "$1"
  out=$("$build/bench/loadgen" tcp "${port[$1]}" "$2" "$3" "$secs" "${pid[$1]}") ||
    echo "bench/echo: $1 at $2 connections: $(sed -n 's/^ready: //p' <<<"$out") of $2 served" >&2
  read -r 'm[rate]' 'm[cpu]' 'm[user]' 'm[p50]' 'm[p99]' 'm[p999]' < <(awk -F': ' '{ v[$1] = $2 }
    END { print v["round-trips-per-second"] + 0, v["server-cpu-us-per-round-trip"] + 0,
                v["server-user-us-per-round-trip"] + 0,
                v["latency-us-p50"] + 0, v["latency-us-p99"] + 0, v["latency-us-p999"] + 0 }' <<<"$out")
}

# compare CONNS SIZE ROUNDS: ROUNDS rounds, each measuring every server
# once.  Collects, as space-separated lists in acc[], each server's figures
# (acc[NAME.rate], acc[NAME.cpu], acc[NAME.p50], ...) and each round's
# ratios: acc[ef.rate] (echo.lua's rate / the floor's), acc[ef.cpu] (the
# floor's CPU per round trip / echo.lua's), acc[ef.p999] (echo.lua's p999
# / the floor's), and acc[ec.rate], acc[ec.cpu] the same against cqueues.
declare -A acc
compare() {
  local r i n=${#servers[@]} w k
  acc=()
  for ((r = 0; r < $3; r++)); do
    declare -A got=()
    for ((i = 0; i < n; i++)); do
      w=${servers[(r + i) % n]}
      measure "$w" "$1" "$2"
      for k in rate cpu user p50 p99 p999; do
        acc[$w.$k]+=" ${m[$k]}"
        got[$w.$k]=${m[$k]}
      done
    done
    acc[ef.rate]+=" $(ratio "${got[echo.lua.rate]}" "${got[floor.rate]}")"
    acc[ef.cpu]+=" $(ratio "${got[floor.cpu]}" "${got[echo.lua.cpu]}")"
    acc[ef.p999]+=" $(ratio "${got[echo.lua.p999]}" "${got[floor.p999]}")"
    if [ "$cq" = 1 ]; then
      acc[ec.rate]+=" $(ratio "${got[echo.lua.rate]}" "${got[cqueues.rate]}")"
      acc[ec.cpu]+=" $(ratio "${got[cqueues.cpu]}" "${got[echo.lua.cpu]}")"
    fi
    if [ -n "$base" ]; then
      acc[eb.rate]+=" $(ratio "${got[echo.lua.rate]}" "${got[base.rate]}")"
      acc[eb.cpu]+=" $(ratio "${got[base.cpu]}" "${got[echo.lua.cpu]}")"
      acc[eb.user]+=" $(ratio "${got[base.user]}" "${got[echo.lua.user]}")"
    fi
  done
}

# med KEY [FORMAT]: the median of acc[KEY] (default format %.3f).
med() { median "${acc[$1]}" "${2:-%.3f}"; }
rounds_of() { echo "${acc[$1]# }"; }

# row CONNS SIZE: the figures of the last compare as one line.
row() {
  local line="conns-$1-size-$2:" w
  for w in "${servers[@]}"; do line+=" $w $(med "$w.rate" %.0f)/s $(med "$w.cpu" %.2f)us"; done
  line+=" | echo/floor rate $(med ef.rate) cpu $(med ef.cpu) (cpu rounds: $(rounds_of ef.cpu))"
  [ "$cq" = 1 ] && line+=" | echo/cqueues rate $(med ec.rate) cpu $(med ec.cpu)"
  [ -n "$base" ] && line+=" | echo/base rate $(med eb.rate) cpu $(med eb.cpu) user $(med eb.user) (cpu rounds: $(rounds_of eb.cpu))"
  line+=" | user"
  for w in "${servers[@]}"; do line+=" $w $(med "$w.user" %.2f)us"; done
  echo "$line"
}

# BENCH_ROWS: only those rows, then done.
if [ -n "$only_rows" ]; then
  for r in $only_rows; do
    [[ $r =~ ^([0-9]+)x([0-9]+)$ ]] || die "BENCH_ROWS: $r is not CONNSxSIZE"
    compare "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "$scale_rounds"
    row "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
  done
  exit 0
fi

# latency CONNS: the percentiles of the last compare, then echo.lua's p999
# over the floor's.
latency() {
  local w p
  for w in "${servers[@]}"; do
    for p in p50 p99 p999; do echo "latency-$w-$1-conns-$p: $(med "$w.$p" %.0f)"; done
  done
  echo "latency-p999-ratio-$1-conns: $(med ef.p999)  (echo.lua's p999 / the floor's; target <= 1.5; rounds: $(rounds_of ef.p999))"
}

# The headline: 50 connections, 64 B then 4 KiB, BENCH_ROUNDS rounds each.
compare 50 64 "$rounds"
for w in "${servers[@]}"; do echo "$w-64B-round-trips-per-second: $(med "$w.rate" %.0f)"; done
rows=$(row 50 64)
lat50=$(latency 50)
r64=$(med ef.rate); s64=$(rounds_of ef.rate); c64=$(med ef.cpu); cs64=$(rounds_of ef.cpu)
if [ "$cq" = 1 ]; then
  q64=$(med ec.rate); qs64=$(rounds_of ec.rate); qc64=$(med ec.cpu); qcs64=$(rounds_of ec.cpu)
fi
compare 50 4096 "$rounds"
for w in "${servers[@]}"; do echo "$w-4KiB-round-trips-per-second: $(med "$w.rate" %.0f)"; done
rows+=$'\n'$(row 50 4096)
echo "echo-ratio-4KiB: $(med ef.rate)  (rounds: $(rounds_of ef.rate))"
echo "echo-cpu-ratio-4KiB: $(med ef.cpu)  (rounds: $(rounds_of ef.cpu))"
echo "echo-ratio: $r64  (echo.lua's rate / the floor's, 64 B; rounds: $s64)"
echo "echo-cpu-ratio: $c64  (the floor's CPU per round trip / echo.lua's, 64 B; target >= 0.8; rounds: $cs64)"
if [ "$cq" = 1 ]; then
  echo "echo-vs-cqueues-ratio-4KiB: $(med ec.rate)  (rounds: $(rounds_of ec.rate))"
  echo "echo-vs-cqueues-cpu-ratio-4KiB: $(med ec.cpu)  (rounds: $(rounds_of ec.cpu))"
  echo "echo-vs-cqueues-ratio: $q64  (echo.lua's rate / cqueues', 64 B; rounds: $qs64)"
  echo "echo-vs-cqueues-cpu-ratio: $qc64  (cqueues' CPU per round trip / echo.lua's, 64 B; target > 1; rounds: $qcs64)"
fi

# By connection count (issue 10): where the working set leaves the cache.
# The 50-connection rows are the headline's; the others take
# BENCH_SCALE_ROUNDS rounds each.
echo "$rows"
for conns in 500 1000 10000; do
  for size in 64 4096; do
    compare "$conns" "$size" "$scale_rounds"
    row "$conns" "$size"
  done
done

# Latency at one connection: every server at once, their round trips in
# turn (loadgen turns), all of them and loadgen on one CPU, the last.
# Measured one server after the other, each p999 was set by what else the
# machine ran in that server's own two seconds, and the rounds' ratios of
# one run went from 1.2 to 2.7; with the servers on whichever CPU the
# kernel woke them on, a server's p50 moved by half from one run to the
# next with where it landed (docs/performance.md, "Latency at one
# connection").  Taken in turns on one CPU, every server lives through the
# same spells, and each trip is the same two switches of that CPU.
# Fifty connections: from the headline's 64 B rounds.
latency_turns() {
  local cpu=$(($(nproc) - 1)) all="0-$(($(nproc) - 1))" r w i out ports=() k
  for w in "${servers[@]}"; do
    ports+=("${port[$w]}")
    taskset -a -p -c "$cpu" "${pid[$w]}" >/dev/null || die "taskset: cannot pin $w"
  done
  acc=()
  for ((r = 0; r < latency_rounds; r++)); do
    out=$(taskset -c "$cpu" "$build/bench/loadgen" turns 64 "$secs" "${ports[@]}") ||
      die "loadgen turns failed: $out"
    declare -A got=()
    i=1
    for w in "${servers[@]}"; do
      for k in p50 p99 p999; do
        got[$w.$k]=$(sed -n "s/^server-$i-latency-us-$k: //p" <<<"$out")
        acc[$w.$k]+=" ${got[$w.$k]}"
      done
      i=$((i + 1))
    done
    acc[ef.p999]+=" $(ratio "${got[echo.lua.p999]}" "${got[floor.p999]}")"
  done
  for w in "${servers[@]}"; do taskset -a -p -c "$all" "${pid[$w]}" >/dev/null; done
}
latency_turns
latency 1
echo "$lat50"

# Resident memory per idle connection: a fresh server of each kind (one
# that served before keeps freed memory to reuse, which would hide the
# cost), BENCH_IDLE_CONNS connections that each made one round trip, the
# server's VmRSS before and after.
for w in "${servers[@]}"; do
  case $w in
    floor) start idle-floor "$build/bench/echo_floor" 0 ;;
    echo.lua) start idle-echo.lua "$build/market" "$src/examples/echo.lua" 0 20000 ;;
    cqueues) start idle-cqueues lua5.4 "$src/bench/echo_cqueues.lua" 0 ;;
    base) start idle-base "$base/market" "$src/examples/echo.lua" 0 20000 ;;
  esac
  out=$("$build/bench/loadgen" idle "${port[idle-$w]}" "$idle_conns" "${pid[idle-$w]}") ||
    echo "bench/echo: idle $w: $(sed -n 's/^ready: //p' <<<"$out") of $idle_conns served" >&2
  note=""
  [ "$w" = echo.lua ] && note="; target <= 4096"
  echo "idle-bytes-per-connection-$w: $(sed -n 's/^idle-bytes-per-connection: //p' <<<"$out")  (resident, $idle_conns idle connections$note)"
  stop "idle-$w"
done

if [ -f "$src/examples/dns.lua" ]; then
  start dns "$build/market" "$src/examples/dns.lua" 0
  "$build/bench/loadgen" dns "${port[dns]}" 32 "$secs" www.example.test | sed 's/^/dns-/'
  # A query's round trip while four clients stream empty TCP frames at the
  # server (one query in flight, so 1000 / rate is the mean in ms): the
  # latency tcp_abuse_spec does not time.
  if command -v socat >/dev/null; then
    for _ in 1 2 3 4; do socat -u OPEN:/dev/zero "TCP:127.0.0.1:${port[dns]}" & pids+=($!); done
    sleep 0.5
    "$build/bench/loadgen" dns "${port[dns]}" 1 "$secs" www.example.test | awk '/queries-per-second/ {
      printf "dns-under-flood-ms: %.2f  (mean round trip; four clients streaming empty TCP frames)\n",
        ($2 > 0) ? 1000 / $2 : -1 }'
  fi
fi
