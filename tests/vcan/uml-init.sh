#!/bin/sh
# PID 1 inside User-Mode Linux (see run.sh): load CAN modules, make vcan0 (CAN FD) and
# vcan1, run the vcan tests (or run.sh's command), write their exit code, power off. The
# root file system is the host's own (hostfs), so the project's virtualenv, mosquitto and
# can-utils are all here.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
OUT="$VA_OUT"
. "$OUT/env.sh"
# Scratch space in memory, inside the output folder: not over /tmp, where the checkout itself
# may live (CI clones anywhere).
mkdir -p "$OUT/tmp" && mount -t tmpfs -o size=512m tmpfs "$OUT/tmp"
export TMPDIR="$OUT/tmp"
{
    M="$VA_MODULES"
    for mod in net/can/can.ko net/can/can-raw.ko drivers/net/can/dev/can-dev.ko \
               drivers/net/can/vcan.ko; do
        insmod "$M/$mod" || echo "insmod $mod failed"
    done
    ip link set lo up
    ip link add dev vcan0 type vcan && ip link set vcan0 mtu 72 && ip link set up vcan0
    ip link add dev vcan1 type vcan && ip link set up vcan1
    cd "$VA_REPO" || exit 1
    export HOME="$OUT/tmp" CI="$VA_CI" VEHICLE_AGENT_VCAN=1
    if [ -n "$VA_COMMAND" ]; then  # run.sh -- CMD: a benchmark, say, instead of the tests
        eval "$VA_COMMAND"
    else
        eval "set -- $VA_PYTEST_ARGS"
        "$VA_REPO/.venv/bin/python" -m pytest tests/vcan -p no:cacheprovider "$@"
    fi
    echo $? > "$OUT/rc"
} > "$OUT/pytest.log" 2>&1
umount "$OUT/tmp" 2>/dev/null
sync
poweroff -f
