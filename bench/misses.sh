#!/usr/bin/env bash
# bench/misses.sh BUILD_DIR [CONNS [SIZE]]: where examples/echo.lua's round
# trip goes at CONNS connections (default 1,000) of SIZE bytes (64), per
# round trip: instructions, first-level data cache misses and last-level
# misses, for the whole server and for the functions with the most
# last-level misses.  Counted by callgrind's cache simulation (32 KiB
# first level, 1 MiB last level, the caches of one core), so the figures
# are the same from run to run where wall time and CPU time are not: on a
# shared virtual machine two runs of one binary differ by a tenth in CPU
# per round trip, and past a few hundred connections it is misses, not
# instructions, that echo.lua pays over the floor (docs/performance.md,
# "bench-misses").  The caches are simulated without hardware
# prefetching, so a prefetch shows as no change here.
#
# The server runs under callgrind with collection off; bench/loadgen opens
# the connections and drives them for BENCH_SECONDS (default 25); after
# BENCH_WARMUP seconds (default 10: under valgrind, opening 1,000
# connections takes a few; give 10,000 a minute) collection is on for
# BENCH_WINDOW seconds (default 10).  Round trips are counted as the
# server's calls of recv() and readv().  The whole run takes BENCH_SECONDS and a few
# more.  BENCH_PROFILE=FILE keeps the profile there, for callgrind_annotate
# (--auto=yes shows the misses line by line).
set -u
build=${1:-build}
conns=${2:-1000}
size=${3:-64}
secs=${BENCH_SECONDS:-25}
warmup=${BENCH_WARMUP:-10}
window=${BENCH_WINDOW:-10}
src=$(cd "$(dirname "$0")/.." && pwd)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/lib.sh
. "$src/bench/lib.sh"
for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "misses: $tool is not installed (apt-get install valgrind); nothing counted"; exit 0; }
done
[ $((warmup + window)) -lt "$secs" ] || die "BENCH_WARMUP + BENCH_WINDOW must be less than BENCH_SECONDS"

start_on_port echo.lua 1 valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes \
  --D1=32768,8,64 --LL=1048576,16,64 --dump-instr=yes --callgrind-out-file="$tmp/cg" \
  "$build/market" "$src/examples/echo.lua" @PORT 20000
server=${pid[echo.lua]}
"$build/bench/loadgen" tcp "${port[echo.lua]}" "$conns" "$size" "$secs" >"$tmp/loadgen" &
gen=$!
sleep "$warmup"
callgrind_control -i on "$server" >/dev/null 2>&1 || die "callgrind_control could not reach the server"
sleep "$window"
callgrind_control -i off "$server" >/dev/null 2>&1
wait "$gen" || die "loadgen: $(cat "$tmp/loadgen")"
kill -INT "$server"
wait "$server" 2>/dev/null
[ -s "$tmp/cg" ] || die "callgrind wrote no profile"
[ -z "${BENCH_PROFILE:-}" ] || cp "$tmp/cg" "$BENCH_PROFILE" || die "cannot write $BENCH_PROFILE"

# The round trips: the calls of recv() and readv() (one per round trip and
# connection: a chunk as large as the last is read in place, with readv).
trips=$(callgrind_annotate --tree=caller --threshold=100 "$tmp/cg" 2>/dev/null | awk '
  /^ *[0-9,]+ .* < / { held = held "\n" $0; next }
  /\* .*:(recv|readv) \[/ { n = split(held, l, "\n"); for (i = 1; i <= n; i++)
                      if (match(l[i], /\(([0-9,]+)x\)/)) { c = substr(l[i], RSTART + 1, RLENGTH - 3);
                                                          gsub(",", "", c); t += c } }
  !/ < / { held = "" }
  END { print t + 0 }')
[ "$trips" -gt 0 ] || die "no round trip in the window: the connections were still opening (raise BENCH_WARMUP)"
echo "misses-round-trips-counted: $trips  ($conns connections, $size B, ${window} s under callgrind)"
callgrind_annotate --sort=DLmr,D1mr,Ir "$tmp/cg" 2>/dev/null |
  awk -v trips="$trips" '
    # Fields: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw, each maybe followed
    # by "(pct%)", then file:function.
    function num(s) { gsub(",", "", s); return s == "." ? 0 : s + 0 }
    /file:function|^-|^$/ { next }
    { line = $0; gsub(/\([^)]*\)/, "", line); n = split(line, f, " ") }
    n < 10 { next }
    f[1] !~ /^[0-9,]+$/ { next }
    /PROGRAM TOTALS/ {
      printf "misses-per-round-trip: instructions %.0f  D1-misses %.2f  LL-misses %.2f (reads %.2f, writes %.2f)\n",
             num(f[1]) / trips, (num(f[5]) + num(f[6])) / trips, (num(f[8]) + num(f[9])) / trips,
             num(f[8]) / trips, num(f[9]) / trips
      next
    }
    shown < 20 {
      name = f[10]; sub(/.*\//, "", name)
      printf "  %-44s LL %5.2f  D1 %5.2f  instructions %6.0f\n", name, (num(f[8]) + num(f[9])) / trips,
             (num(f[5]) + num(f[6])) / trips, num(f[1]) / trips
      shown++
    }'
