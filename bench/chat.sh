#!/usr/bin/env bash
# bench/chat.sh BUILD_DIR: examples/chat.lua as one process (no cluster)
# against `market --workers 2 --cluster URL` (one room over two workers
# joined through a nats-server on loopback: docs/workers.md,
# docs/cluster.md), both driven by bench/chatgen.c: USERS users, each
# sending BENCH_RATE lines a second at a steady pace, every user reading
# everything.  For each number of users it prints each configuration's
# lines delivered per second and server CPU per delivered line (the
# workers' summed; nats-server's apart), the ratios of the two, how the
# users were spread over the workers, and whether every user heard every
# line in every run.  No target (issue 13): these are the figures.
#
# As in bench/workers.sh, each figure is the median of short rounds, the
# two servers one after the other in each round, the order turning.
# Knobs: BENCH_USERS ("50 200"; at most 1,000, chat.lua's limit),
# BENCH_RATE (lines a second per user, 5), BENCH_SECONDS (3),
# BENCH_ROUNDS (5).
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
users_list=${BENCH_USERS:-50 200}
lrate=${BENCH_RATE:-5}
secs=${BENCH_SECONDS:-3}
rounds=${BENCH_ROUNDS:-5}

# shellcheck source=bench/lib.sh
. "$src/bench/lib.sh"

start_nats
start_on_port one 1 "$build/market" "$src/examples/chat.lua" @PORT
start_on_port two 2 "$build/market" --workers 2 --cluster "$url/chatbench" "$src/examples/chat.lua" @PORT

# The server's processes: the workers under `--workers`, else itself.
procs() {
  local c
  c=$(cat "/proc/$1/task/$1/children" 2>/dev/null)
  if [ -n "$c" ]; then echo "$c" | tr -s ' \n' ','; else echo "$1"; fi
}

# settle NAME: waits (at most 10 s) until the server's CPU stops moving,
# so that the departures of the last run's users are over before the
# next run measures anything (on either server: they share the cores).
settle() {
  local a b
  a=$(ticks "${pid[$1]}")
  for _ in $(seq 50); do
    sleep 0.2
    b=$(ticks "${pid[$1]}")
    [ "$a" = "$b" ] && return
    a=$b
  done
}

# measure NAME USERS: one chatgen run; sets m[rate], m[cpu] (the
# server's µs per delivered line), m[nats] (nats-server's), m[client]
# (chatgen's), m[p99], m[ok] (chatgen's status: 0 when every user heard
# every line) and m[spread] (users per worker).
declare -A m
measure() {
  local out n0
  kill -0 "${pid[$1]}" 2>/dev/null || die "$1 is gone (it was pid ${pid[$1]})"
  settle one
  settle two
  n0=$(wc -l <"$tmp/$1.log")
  out=$("$build/bench/chatgen" "${port[$1]}" "$2" "$lrate" "$secs" "$(procs "${pid[$1]}")" "$nats_pid")
  m[ok]=$?
  if [ "${m[ok]}" != 0 ]; then
    echo "bench/chat: $1, $2 users: $(grep -v '^users-on\|^latency' <<<"$out" | tr '\n' ' ')" >&2
    # What the server said meanwhile (the cluster driver's warnings).
    tail -n +$((n0 + 1)) "$tmp/$1.log" | head -20 >&2
  fi
  m[rate]=$(sed -n 's/^lines-delivered-per-second: //p' <<<"$out")
  m[rate]=${m[rate]:-0}
  m[cpu]=$(sed -n 's/^server-cpu-us-per-line: //p' <<<"$out")
  m[cpu]=${m[cpu]:-0}
  m[nats]=$(sed -n 's/^nats-cpu-us-per-line: //p' <<<"$out")
  m[nats]=${m[nats]:-0}
  m[client]=$(sed -n 's/^client-cpu-us-per-line: \([0-9.]*\).*/\1/p' <<<"$out")
  m[client]=${m[client]:-0}
  m[p99]=$(sed -n 's/^latency-us-p99: //p' <<<"$out")
  m[p99]=${m[p99]:-0}
  m[spread]=$(sed -n 's/^users-on-node-\(.*\): \(.*\)/\1 \2/p' <<<"$out" | sort | awk '{ printf "%s%s", (NR > 1 ? "/" : ""), $2 }')
}

servers=(one two)
for u in $users_list; do
  declare -A acc=() fails=()
  for ((r = 0; r < rounds; r++)); do
    declare -A got=()
    for ((i = 0; i < 2; i++)); do
      w=${servers[(r + i) % 2]}
      measure "$w" "$u"
      acc[$w.rate]+=" ${m[rate]}"
      acc[$w.cpu]+=" ${m[cpu]}"
      acc[$w.nats]+=" ${m[nats]}"
      acc[client]+=" ${m[client]}"
      acc[$w.p99]+=" ${m[p99]}"
      acc[$w.spread]+=" ${m[spread]}"
      [ "${m[ok]}" = 0 ] || fails[$w]=$((${fails[$w]:-0} + 1))
      got[$w.rate]=${m[rate]}
      got[$w.cpu]=${m[cpu]}
    done
    acc[ratio]+=" $(fmt %.3f "(${got[one.rate]} > 0) ? ${got[two.rate]} / ${got[one.rate]} : 0")"
    acc[cratio]+=" $(fmt %.3f "(${got[one.cpu]} > 0) ? ${got[two.cpu]} / ${got[one.cpu]} : 0")"
  done
  offered=$(fmt %.0f "$u * ($u - 1) * $lrate")
  echo "== $u users, $lrate lines a second each (offered: $offered lines delivered a second)"
  echo "chat-1-lines-delivered-per-second: $(median "${acc[one.rate]}" %.0f)  (one process)"
  echo "chat-2-lines-delivered-per-second: $(median "${acc[two.rate]}" %.0f)  (--workers 2 --cluster)"
  echo "chat-1-cpu-us-per-line: $(median "${acc[one.cpu]}" %.3f)"
  echo "chat-2-cpu-us-per-line: $(median "${acc[two.cpu]}" %.3f)  (both workers; nats-server's besides: $(median "${acc[two.nats]}" %.3f))"
  echo "client-cpu-us-per-line: $(median "${acc[client]}" %.3f)  (chatgen's)"
  echo "chat-1-latency-us-p99: $(median "${acc[one.p99]}" %.0f)"
  echo "chat-2-latency-us-p99: $(median "${acc[two.p99]}" %.0f)"
  echo "chat-rate-ratio: $(median "${acc[ratio]}")  (2 workers' / one process's; rounds:${acc[ratio]})"
  echo "chat-cpu-ratio: $(median "${acc[cratio]}")  (2 workers' CPU per line / one process's; rounds:${acc[cratio]})"
  # What the cores allow, as bench/workers.sh estimates it: one process
  # delivers at most min(1 / its CPU per line, cores / (its + chatgen's +
  # nats-server's)), two workers at most cores / (theirs + chatgen's +
  # nats-server's).  Only meaningful where the offered rate saturates.
  s1=$(median "${acc[one.cpu]}" %.4f); s2=$(median "${acc[two.cpu]}" %.4f)
  c=$(median "${acc[client]}" %.4f); q=$(median "${acc[two.nats]}" %.4f)
  n=$(nproc)
  echo "chat-rate-ceilings: one process $(fmt %.0f "($s1 > 0) ? ((1e6 / $s1 < $n * 1e6 / ($s1 + $c)) ? 1e6 / $s1 : $n * 1e6 / ($s1 + $c)) : 0"), two workers $(fmt %.0f "($s2 + $c + $q > 0) ? $n * 1e6 / ($s2 + $c + $q) : 0")  (lines a second these CPU costs allow on $n cores, chatgen on them)"
  echo "chat-2-users-per-worker:${acc[two.spread]}  (the two workers' counts, each round)"
  echo "chat-every-user-heard-every-line: one process: $( [ -z "${fails[one]:-}" ] && echo "yes, $rounds runs of $rounds" || echo "NO in ${fails[one]} runs of $rounds"); two workers: $( [ -z "${fails[two]:-}" ] && echo "yes, $rounds runs of $rounds" || echo "NO in ${fails[two]} runs of $rounds")"
done
