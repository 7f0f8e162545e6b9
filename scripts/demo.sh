#!/usr/bin/env bash
# The demo: what virtkit can do on this machine, as a user would type it.
# Run through `bash scripts/dev.sh demo`, which sets the machine up first.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; "$@"; }

step virtkit --version
step virtkit host check
code=$?
step virtkit image build tiny
step virtkit image list
step virtkit image show tiny
# An instance or network left by an interrupted run.
virtkit delete --force demo >/dev/null 2>&1
virtkit delete --force demo-c >/dev/null 2>&1
virtkit network delete demo-net >/dev/null 2>&1
step virtkit network create demo-net   # a NAT bridge with DHCP/DNS, its subnet chosen free
step virtkit launch tiny demo --vm --wait --cpu-allowance 50% --network demo-net
step virtkit list
step virtkit exec demo -- uname -a
step virtkit set demo memory=128MiB
sleep 2  # the guest's balloon driver gives the memory back
step virtkit exec demo -- grep MemTotal /proc/meminfo
step virtkit show demo
step virtkit launch tiny demo-c --container --memory 64MiB --processes 100 --network demo-net --wait
step virtkit exec demo-c -- sh -c 'id; cat /proc/self/uid_map; ps'   # root in it is not root on the host
step virtkit set demo-c memory=32MiB
# The VM reaches the container by name once both have their DHCP lease (the guests ask at boot).
step virtkit exec demo -- sh -c 'for i in $(seq 20); do ping -c1 -W1 demo-c >/dev/null 2>&1 && break; sleep 1; done; ping -c2 -W2 demo-c'
step virtkit network show demo-net
step virtkit stop demo
step virtkit delete demo
step virtkit stop demo-c
step virtkit delete demo-c
step virtkit network delete demo-net
step virtkit run --rm tiny -- sh -c 'echo "hello from a one-shot container: $(hostname)"; exit 3'
echo "(its exit status: $?)"
echo
case $code in
    0) echo "host check: everything virtkit needs is here (exit 0)" ;;
    1) echo "host check: something required is missing (exit 1): see the FAIL lines above" ;;
    *) echo "host check: could not run (exit $code)" ;;
esac
exit "$code"
