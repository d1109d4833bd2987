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

start_nats
"$build/bench/nats_floor" "$url" "${BENCH_MESSAGES:-200000}" "${BENCH_SIZE:-64}" "${BENCH_SAMPLES:-20000}"
