#!/usr/bin/env bash
# bench/callgrind.sh BUILD_DIR [N]: instructions per Lua-to-Lua message,
# per spawn (with its boot and its kill, the collector included), and per
# presence and absence event, counted by callgrind: deterministic, so they
# compare across changes on a machine too busy for its timings to mean
# much.  Runs have time() fixed at 0 (bench/fixtime.c, preloaded) and no
# address randomisation (setarch -R) where setarch is found: Lua seeds
# its string hashes from both, and then the same code counts the same.
#
# Each figure is the difference of two runs of bench/route.lua --stage,
# one stopping right before the measured step and one right after it (both
# exit there, skipping the VM's teardown, which differs between them),
# divided by N (default 10,000):
#   presence: N subscribers, one publisher appears (its own side included)
#   publisher absence: that publisher is killed
#   absence: N processes with an endpoint each killed, one observer
#   messages: 10 * N messages, one publisher and one subscriber
#   spawns: two waves of N spawns then kills, after two such waves
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
  out=$($norandom env LD_PRELOAD="$fixtime" LUA_CPATH="$build/lua/?.so" \
        valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" \
        lua5.4 "$src/bench/route.lua" --stage "$1" "${2:-$n}" 2>&1) ||
    { echo "$out" >&2; echo "bench/callgrind: the $1 run failed" >&2; exit 1; }
  sed -n 's/.*Collected : //p' <<<"$out"
}
per() { echo $((($2 - $1) / ${3:-$n})); }
fixtime=$(cd "$build" && pwd)/bench/libfixtime.so
[ -f "$fixtime" ] || { echo "bench/callgrind: $fixtime is missing (ninja -C $build)" >&2; exit 1; }
norandom=
if command -v setarch >/dev/null && setarch "$(uname -m)" -R true 2>/dev/null; then
  norandom="setarch $(uname -m) -R"
fi
msgs=$((n * 10))
setup=$(ir messages-setup "$msgs"); sent=$(ir messages-sent "$msgs")
echo "message-instructions: $(per "$setup" "$sent" "$msgs")  ($msgs Lua-to-Lua messages, one publisher, one subscriber)"
two=$(ir spawns-two); four=$(ir spawns-four)
echo "spawn-instructions: $(per "$two" "$four" $((n * 2)))  (spawn, boot with one endpoint, kill: waves three and four of $n, the collector included)"


setup=$(ir presence-setup); appear=$(ir presence-appear); leave=$(ir presence-leave)
echo "presence-instructions-per-event: $(per "$setup" "$appear")  ($n subscribers, one publisher appears)"
echo "publisher-absence-instructions-per-event: $(per "$appear" "$leave")  ($n subscribers, their publisher is killed)"
setup=$(ir absence-setup); killed=$(ir absence-killed)
echo "absence-instructions-per-event: $(per "$setup" "$killed")  ($n processes killed, one observer; the kills included)"
