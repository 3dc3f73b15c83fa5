#!/usr/bin/env bash
# Runs tests/vcan against real SocketCAN. Where the host has vcan (an OEM's CI with
# `modprobe vcan`), directly; where its kernel has no CAN (this project's machines), inside a
# User-Mode Linux kernel, which has CAN as modules and boots in seconds with the host's files
# as its root. That kernel comes from tests/vcan/install-uml.sh (run by .ci/run), not from
# bookworm's package user-mode-linux, whose 6.1 kernel dies at once on CPUs with AMX (see
# there). Fails when the tests fail or cannot run; never skips silently.
#
#   tests/vcan/run.sh                          the vcan tests (PYTEST_ARGS for pytest's)
#   tests/vcan/run.sh -- CMD [ARG...]          CMD instead, with vcan0/vcan1, e.g. a benchmark:
#   tests/vcan/run.sh -- .venv/bin/python bench/live.py --vcan
set -uo pipefail
COMMAND=""
if [ "${1:-}" = "--" ]; then
    shift
    COMMAND=$(printf '%q ' "$@")
fi
cd "$(dirname "$0")/../.."
REPO="$PWD"
PY="$REPO/.venv/bin/python"

if ip link show vcan0 >/dev/null 2>&1 && ip link show vcan1 >/dev/null 2>&1; then
    echo "vcan tests: running directly on this host's vcan0/vcan1"
    [ -n "$COMMAND" ] && eval "exec $COMMAND"
    VEHICLE_AGENT_VCAN=1 exec "$PY" -m pytest tests/vcan ${PYTEST_ARGS:-}
fi

UML_HOME="${UML_HOME:-/opt/vehicle-agent-uml}"
if [ ! -x "$UML_HOME/linux.uml" ] || [ ! -d "$UML_HOME/modules/kernel" ]; then
    echo "vcan tests: no vcan0/vcan1 on this host and no User-Mode Linux in $UML_HOME" \
         "(as root: tests/vcan/install-uml.sh); cannot run them" >&2
    exit 1
fi

OUT="$REPO/.uml"
rm -rf "$OUT" && mkdir -p "$OUT"
echo "vcan tests: booting User-Mode Linux $("$UML_HOME/linux.uml" --version 2>&1 | head -1) with vcan0 (CAN FD) and vcan1"
# What init needs, in a file (kernel arguments cannot carry spaces); its path goes on the
# kernel command line, whose KEY=value arguments become init's environment.
{
    printf 'export VA_REPO=%q\n' "$REPO"
    printf 'export VA_MODULES=%q\n' "$UML_HOME/modules/kernel"
    printf 'export VA_CI=%q\n' "${CI:-}"
    printf 'export VA_PYTEST_ARGS=%q\n' "${PYTEST_ARGS:--q}"
    printf 'export VA_COMMAND=%q\n' "$COMMAND"
} > "$OUT/env.sh"
timeout "${UML_TIMEOUT:-900}" "$UML_HOME/linux.uml" mem=1536M root=/dev/root rootfstype=hostfs rootflags=/ rw \
    init="$REPO/tests/vcan/uml-init.sh" con0=fd:0,fd:1 con=null VA_OUT="$OUT" \
    < /dev/null > "$OUT/kernel.log" 2>&1
kernel_rc=$?
cat "$OUT/pytest.log" 2>/dev/null
if [ ! -f "$OUT/rc" ]; then
    echo "vcan tests: User-Mode Linux ended (code $kernel_rc) before the tests finished;" \
         "see $OUT/kernel.log" >&2
    tail -20 "$OUT/kernel.log" >&2
    exit 1
fi
rc=$(cat "$OUT/rc")
if [ -n "$COMMAND" ]; then
    echo "inside User-Mode Linux: $COMMAND(exit $rc)"
    exit "$rc"
fi
summary=$(grep -E "[0-9]+ (passed|failed)" "$OUT/pytest.log" | tail -1)
echo "vcan tests inside User-Mode Linux: ${summary:-no summary} (exit $rc)"
exit "$rc"
