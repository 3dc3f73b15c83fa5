#!/bin/sh
# /init of the tiny initramfs that tests/vcan/run.sh builds for the virtual machine: with the
# static busybox beside it, load the kernel modules run.sh listed (virtio, 9p, CAN, vcan), mount
# the host's root file system (shared over 9p) and hand over to tests/vcan/vm-init.sh in it.
# Debian's kernel has 9p and CAN only as modules, hence this stage before the real root.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r module; do
    insmod "$module" || echo "vm initramfs: insmod $module failed"
done < /modules.list
mkdir -p /root
# msize: bigger 9p messages, far fewer round trips for the virtualenv's many small reads.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,rw hostroot /root; then
    echo "vm initramfs: cannot mount the host's root over 9p"
    poweroff -f
fi
umount /proc /sys /dev
# VA_REPO and VA_OUT came on the kernel command line and stay in the environment.
exec switch_root /root "$VA_REPO/tests/vcan/vm-init.sh"
