#!/usr/bin/env bash
# bench/startup.sh BUILD_DIR: how long `market -e ""` takes to start and
# stop (the ground VM booted with its drivers, an empty script run, the VM
# stopped), against `lua5.4 -e ""` in the same rounds: the floor no Lua
# program starts below.  Seven rounds of 200 starts each, the two commands
# one after the other in each round; medians of the wall and CPU times of
# one start and of the rounds' ratios.  docs/performance.md, "Start-up".
set -u
build=${1:-build}
. "$(dirname "$0")/lib.sh"
startup=$build/bench/startup
rounds=7 runs=200
declare -A wall cpu
ratios_wall="" ratios_cpu=""
for _ in $(seq $rounds); do
  read -r _ mw _ mc < <("$startup" $runs "$build/market" -e "") || die "market failed to start"
  read -r _ lw _ lc < <("$startup" $runs lua5.4 -e "") || die "lua5.4 failed to start"
  wall[market]+=" $mw" cpu[market]+=" $mc" wall[lua]+=" $lw" cpu[lua]+=" $lc"
  ratios_wall+=" $(fmt %.4f "$mw / $lw")" ratios_cpu+=" $(fmt %.4f "$mc / $lc")"
done
echo "startup-ms-market: $(median "${wall[market]}")  (cpu $(median "${cpu[market]}"); market -e \"\")"
echo "startup-ms-lua5.4: $(median "${wall[lua]}")  (cpu $(median "${cpu[lua]}"); lua5.4 -e \"\", the floor)"
echo "startup-ratio-market/lua5.4: $(median "$ratios_wall")  (cpu $(median "$ratios_cpu"))"
