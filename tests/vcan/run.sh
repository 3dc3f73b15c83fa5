#!/usr/bin/env bash
# Runs tests/vcan against real SocketCAN. Where the host has vcan (an OEM's CI with
# `modprobe vcan`), directly; where its kernel has no CAN (this project's machines), inside a
# small QEMU virtual machine (KVM where /dev/kvm is usable, else plain emulation) that boots
# Debian's own kernel (package linux-image-amd64: CAN and vcan as modules) with the host's root
# file system shared over 9p as its root, so the project's virtualenv, mosquitto and can-utils
# are all there. Fails when the tests fail or cannot run; never skips silently.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
PY="$REPO/.venv/bin/python"

if ip link show vcan0 >/dev/null 2>&1 && ip link show vcan1 >/dev/null 2>&1; then
    echo "vcan tests: running directly on this host's vcan0/vcan1"
    VEHICLE_AGENT_VCAN=1 exec "$PY" -m pytest tests/vcan ${PYTEST_ARGS:-}
fi

fail() {
    echo "vcan tests: $*; cannot run them (.ci/run installs what they need)" >&2
    exit 1
}

# Modules the initramfs loads, dependencies first: virtio and 9p to mount the host's root,
# then SocketCAN (can-raw: the sockets; can-dev, vcan: the virtual buses).
MODULES="virtio_pci 9pnet_virtio 9p can can-raw can-dev vcan"

# The newest installed kernel whose modules include vcan (Debian's generic amd64 kernel has
# it; the cloud flavour has no CAN).
KERNEL="" KVER=""
for image in $(ls /boot/vmlinuz-* 2>/dev/null | sort -V); do
    version="${image#/boot/vmlinuz-}"
    if modprobe -S "$version" --show-depends vcan >/dev/null 2>&1; then
        KERNEL="$image" KVER="$version"
    fi
done
[ -n "$KERNEL" ] || fail "no vcan0/vcan1 on this host and no kernel in /boot with vcan" \
    "among its modules (Debian package linux-image-amd64)"
command -v qemu-system-x86_64 >/dev/null || fail "no qemu-system-x86_64 (package qemu-system-x86)"
BUSYBOX=$(command -v busybox) || fail "no busybox (package busybox-static)"
# The initramfs has no libraries: ldd fails on (only) a static executable.
! ldd "$BUSYBOX" >/dev/null 2>&1 || fail "$BUSYBOX is not statically linked (package busybox-static)"
case "$REPO" in *[[:space:]]*) fail "the checkout's path has a space (kernel arguments cannot)";; esac

OUT="$REPO/.vm"
rm -rf "$OUT" && mkdir -p "$OUT"

# The initramfs: static busybox, the modules (decompressed: busybox's insmod may not read
# .xz/.zst), vm-initramfs.sh as /init.
ROOT="$OUT/initramfs"
mkdir -p "$ROOT/bin" "$ROOT/modules" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in sh mount umount insmod mkdir switch_root poweroff; do
    ln -s busybox "$ROOT/bin/$applet"
done
cp "$REPO/tests/vcan/vm-initramfs.sh" "$ROOT/init"
: > "$ROOT/modules.list"
for module in $MODULES; do
    paths=$(modprobe -S "$KVER" --show-depends "$module" 2>&1) \
        || fail "kernel $KVER has no module $module: $paths"
    for path in $(printf '%s\n' "$paths" | awk '$1 == "insmod" { print $2 }'); do
        name=$(basename "$path"); name="${name%%.ko*}.ko"
        [ -e "$ROOT/modules/$name" ] && continue
        case "$path" in
            *.xz) xz -dc "$path" ;;
            *.zst) zstd -qdc "$path" ;;
            *.gz) gzip -dc "$path" ;;
            *) cat "$path" ;;
        esac > "$ROOT/modules/$name" || fail "cannot read $path"
        echo "/modules/$name" >> "$ROOT/modules.list"
    done
done
(cd "$ROOT" && find . | cpio -o -H newc --quiet) > "$OUT/initramfs.cpio" \
    || fail "cannot pack the initramfs"

if [ "${VCAN_VM_ACCEL:-}" != tcg ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    ACCEL=(-accel kvm -cpu host) WHAT="a KVM virtual machine"
else
    # Without KVM the same machine runs emulated: several times slower, still correct.
    ACCEL=(-accel tcg -cpu max) WHAT="an emulated (TCG) virtual machine"
    echo "vcan tests: /dev/kvm is not usable here; emulating the machine (slower)"
fi

# What init needs, in a file (kernel arguments cannot carry spaces); its path goes on the
# kernel command line, whose KEY=value arguments become init's environment.
{
    printf 'export VA_CI=%q\n' "${CI:-}"
    printf 'export VA_PYTEST_ARGS=%q\n' "${PYTEST_ARGS:--q}"
} > "$OUT/env.sh"
echo "vcan tests: booting $WHAT (kernel $KVER) with vcan0 (CAN FD) and vcan1"
# panic=-1 with -no-reboot: a guest that panics ends QEMU at once instead of hanging.
timeout "${VCAN_VM_TIMEOUT:-900}" qemu-system-x86_64 -nodefaults -no-user-config \
    -machine q35 "${ACCEL[@]}" -smp 2 -m 1536 -display none -serial stdio -no-reboot \
    -kernel "$KERNEL" -initrd "$OUT/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 VA_REPO=$REPO VA_OUT=$OUT" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,multidevs=remap \
    < /dev/null > "$OUT/kernel.log" 2>&1
vm_rc=$?
cat "$OUT/pytest.log" 2>/dev/null
if [ ! -f "$OUT/rc" ]; then
    echo "vcan tests: the virtual machine ended (code $vm_rc) before the tests finished;" \
         "see $OUT/kernel.log" >&2
    tail -20 "$OUT/kernel.log" >&2
    exit 1
fi
rc=$(cat "$OUT/rc")
summary=$(grep -E "[0-9]+ (passed|failed)" "$OUT/pytest.log" | tail -1)
echo "vcan tests inside $WHAT: ${summary:-no summary} (exit $rc)"
exit "$rc"
