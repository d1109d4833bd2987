#!/usr/bin/env bash
# bench/http.sh BUILD_DIR: HTTP requests a second and CPU per request of a
# hello-world http.serve (market.http), against two baselines in the same
# rounds: a plain libev C server that answers every request with the same
# bytes and parses nothing but the blank line (the floor: bench/
# http_floor.c), and a tcp.serve that answers each read with those bytes
# (market's connection objects without HTTP).  wrk drives each, one thread,
# BENCH_CONNS connections (default 50), BENCH_SECONDS a run (default 4), in
# BENCH_ROUNDS interleaved rounds (default 5); medians.  CPU per request is
# the server's own (user + system, from /proc), so wrk's share of the two
# cores does not count.  Then a connection per request: wrk sends
# "Connection: close" on BENCH_CLOSE_CONNS connections (default 10) to
# http.serve and to the floor answering so (http_floor PORT close); the
# same rounds, CPU per connection.  docs/performance.md, "bench-http".
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
. "$src/bench/lib.sh"
command -v wrk >/dev/null || { echo "http: wrk is not installed (apt-get install wrk); nothing measured"; exit 0; }
conns=${BENCH_CONNS:-50} secs=${BENCH_SECONDS:-4} rounds=${BENCH_ROUNDS:-5}

start_on_port floor 1 "$build/bench/http_floor" @PORT
start_on_port objects 1 "$build/market" "$src/bench/http_servers.lua" objects @PORT
start_on_port http 1 "$build/market" "$src/bench/http_servers.lua" http @PORT
start_on_port floor-close 1 "$build/bench/http_floor" @PORT close
cconns=${BENCH_CLOSE_CONNS:-10}

# run KEY SERVER [WRK ARGS...]: one wrk run against SERVER; sets r[KEY]
# (requests a second) and c[KEY] (the server's CPU in us a request), and
# adds them to rate[KEY] and cpu[KEY].
run() {
  local k=$1 s=$2 t0 t1 out n bad
  shift 2
  t0=$(ticks "${pid[$s]}")
  out=$(wrk -t1 -d"${secs}s" "$@" "http://127.0.0.1:${port[$s]}/") || die "wrk failed against $s"
  t1=$(ticks "${pid[$s]}")
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  bad=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [ -n "$n" ] && [ "$n" -gt 0 ] || die "no requests answered by $s: $out"
  [ -z "$bad" ] || die "$s ($k): $bad"
  r[$k]=$(fmt %.0f "$n / $secs")
  c[$k]=$(fmt %.3f "($t1 - $t0) / $hz * 1e6 / $n")
  rate[$k]+=" ${r[$k]}" cpu[$k]+=" ${c[$k]}"
}

declare -A rate cpu r c
ratio_rate="" ratio_cpu="" ratio_obj="" ratio_close=""
for _ in $(seq "$rounds"); do
  for s in floor objects http; do run "$s" "$s" -c"$conns"; done
  ratio_rate+=" $(fmt %.4f "${r[http]} / ${r[floor]}")"
  ratio_cpu+=" $(fmt %.4f "${c[floor]} / ${c[http]}")"
  ratio_obj+=" $(fmt %.4f "${c[objects]} / ${c[http]}")"
  run floor-close floor-close -c"$cconns" -H "Connection: close"
  run http-close http -c"$cconns" -H "Connection: close"
  ratio_close+=" $(fmt %.4f "${c[floor-close]} / ${c[http-close]}")"
done
for s in floor objects http; do
  echo "http-$s: $(median "${rate[$s]}" %.0f) requests/s, $(median "${cpu[$s]}") us CPU a request  (rounds: ${rate[$s]# })"
done
echo "http-vs-floor-rate: $(median "$ratio_rate")  (http.serve's requests/s / the C floor's; $conns connections)"
echo "http-vs-floor-cpu: $(median "$ratio_cpu")  (the floor's CPU a request / http.serve's; rounds: ${ratio_cpu# })"
echo "http-vs-objects-cpu: $(median "$ratio_obj")  (tcp.serve's CPU a request / http.serve's: what HTTP costs over the connection objects)"
for s in floor-close http-close; do
  echo "http-$s: $(median "${rate[$s]}" %.0f) connections/s, $(median "${cpu[$s]}") us CPU a connection  (rounds: ${rate[$s]# })"
done
echo "http-close-vs-floor-cpu: $(median "$ratio_close")  (the floor's CPU a connection / http.serve's; a request each, \"Connection: close\", $cconns connections; rounds: ${ratio_close# })"
