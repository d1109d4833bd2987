#!/usr/bin/env bash
# bench/nats_floor.sh BUILD_DIR: the floor for the cluster's figures
# (bench/nats_floor.c): plain libnats, a publisher and a subscriber
# connection through a nats-server this script starts on loopback, on a
# port the kernel picks (`-p -1`), read back from the server's ports file
# (--ports_file_dir).  Prints what nats_floor prints: messages per second,
# one-way latency percentiles, drops.  Knobs: BENCH_MESSAGES (200000),
# BENCH_SIZE (64), BENCH_SAMPLES (20000).
set -u
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$src/bench/lib.sh"

command -v nats-server >/dev/null || die "nats-server is not installed (apt-get install nats-server)"
nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/server.log" 2>&1 &
pids+=($!)
url=
for _ in $(seq 100); do
  url=$(sed -n 's/.*"nats":\["\([^"]*\)".*/\1/p' "$tmp"/nats-server_*.ports 2>/dev/null)
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || { cat "$tmp/server.log" >&2; die "nats-server did not start"; }
"$build/bench/nats_floor" "$url" "${BENCH_MESSAGES:-200000}" "${BENCH_SIZE:-64}" "${BENCH_SAMPLES:-20000}"
