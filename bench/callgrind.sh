#!/usr/bin/env bash
# bench/callgrind.sh BUILD_DIR [N]: instructions per presence and absence
# event, counted by callgrind: deterministic, so they compare across
# changes on a machine too busy for its timings to mean much.
#
# Each figure is the difference of two runs of bench/route.lua --stage,
# one stopping right before the measured step and one right after it (both
# exit there, skipping the VM's teardown, which differs between them),
# divided by N (default 10,000):
#   presence: N subscribers, one publisher appears (its own side included)
#   publisher absence: that publisher is killed
#   absence: N processes with an endpoint each killed, one observer
set -eu
build=${1:-build}
n=${2:-10000}
src=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v valgrind >/dev/null; then
  echo "callgrind: valgrind is not installed (apt-get install valgrind); nothing counted"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ir STAGE: the instructions of a run that stops after STAGE.
ir() {
  local out
  out=$(LUA_CPATH="$build/lua/?.so" valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" \
        lua5.4 "$src/bench/route.lua" --stage "$1" "$n" 2>&1) ||
    { echo "$out" >&2; echo "bench/callgrind: the $1 run failed" >&2; exit 1; }
  sed -n 's/.*Collected : //p' <<<"$out"
}
per() { echo $((($2 - $1) / n)); }

setup=$(ir presence-setup); appear=$(ir presence-appear); leave=$(ir presence-leave)
echo "presence-instructions-per-event: $(per "$setup" "$appear")  ($n subscribers, one publisher appears)"
echo "publisher-absence-instructions-per-event: $(per "$appear" "$leave")  ($n subscribers, their publisher is killed)"
setup=$(ir absence-setup); killed=$(ir absence-killed)
echo "absence-instructions-per-event: $(per "$setup" "$killed")  ($n processes killed, one observer; the kills included)"
