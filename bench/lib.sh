# bench/lib.sh: what the benchmark scripts share (sourced by bench/*.sh).
# A scratch directory $tmp and the list $pids of the servers started, both
# cleaned up however the script ends; die, fmt, median, start_nats.

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM          # through the EXIT trap: nothing is left running

die() { echo "bench/$(basename "$0" .sh): $*" >&2; exit 1; }

# fmt FORMAT EXPRESSION: awk arithmetic, printed with FORMAT.
fmt() { awk "BEGIN { printf \"$1\", $2 }"; }

# median "LIST" [FORMAT]: the median of a space-separated list of numbers
# (default format %.3f).
median() {
  # shellcheck disable=SC2086  # the list is split on purpose
  printf '%s\n' $1 | sort -g | awk -v f="${2:-%.3f}" '{ v[NR] = $1 }
    END { printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# start_nats: a nats-server on loopback, on a port it picks (read back from
# its ports file in $tmp); sets $url to its nats:// URL.
start_nats() {
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
}
