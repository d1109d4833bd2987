# bench/lib.sh: what the benchmark scripts share (sourced by every
# bench/*.sh).  A scratch directory $tmp and the list $pids of the servers
# started, both cleaned up however the script ends; die, fmt, median;
# free_port, ticks, start_on_port (servers given a port), start_nats.

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

# A port free now: workers must be given one (port 0 would give each
# worker a port of its own).
free_port() {
  "$build/market" -e 'local s = assert(require("market.sys").tcp_listen(0)); print(s:local_port()); s:close()'
}

# The CPU time (clock ticks, user + system) of a process and its children
# that still run: the workers under `--workers`.
ticks() {
  local p all=$1
  all+=" $(cat "/proc/$1/task/$1/children" 2>/dev/null)"
  for p in $all; do
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null
  done | awk '{ t += $1 } END { print t + 0 }'
}
hz=$(getconf CLK_TCK)

# start_on_port NAME N COMMAND...: runs a server (COMMAND, each @PORT in
# it made a free port) whose N processes each say "listening on port" on
# stderr once they listen; sets pid[NAME] (the process started) and
# port[NAME].
declare -A pid port
start_on_port() {
  local name=$1 n=$2 log="$tmp/$1.log" p a args=()
  shift 2
  p=$(free_port) || die "no free port"
  for a in "$@"; do args+=("${a//@PORT/$p}"); done
  : >"$log"   # exists before the first look below, which may beat the shell's redirect
  "${args[@]}" >/dev/null 2>"$log" &
  pids+=($!)
  pid[$name]=$!
  port[$name]=$p
  for _ in $(seq 100); do
    [ "$(grep -c 'listening on port' "$log")" -ge "$n" ] && return
    kill -0 "${pid[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  die "$name did not start"
}

# start_nats: a nats-server on loopback, on a port it picks (read back from
# its ports file in $tmp); sets $url to its nats:// URL and $nats_pid.
start_nats() {
  command -v nats-server >/dev/null || die "nats-server is not installed (apt-get install nats-server)"
  nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/server.log" 2>&1 &
  nats_pid=$!
  pids+=("$nats_pid")
  url=
  for _ in $(seq 100); do
    url=$(sed -n 's/.*"nats":\["\([^"]*\)".*/\1/p' "$tmp"/nats-server_*.ports 2>/dev/null)
    [ -n "$url" ] && break
    sleep 0.05
  done
  [ -n "$url" ] || { cat "$tmp/server.log" >&2; die "nats-server did not start"; }
}
