#!/usr/bin/env bash
# Installs the User-Mode Linux kernel that tests/vcan/run.sh boots, into UML_HOME (default
# /opt/vehicle-agent-uml), without touching the system's packages. Needs root, apt and patchelf.
#
# Why not bookworm's (or trixie's) package user-mode-linux: its kernel (6.1, 6.12) gives the
# floating-point state to ptrace in a buffer of fixed size; on a CPU with AMX the host's XSAVE
# area is larger, PTRACE_SETREGSET fails with EFAULT ("userspace - ptrace set fp regs failed,
# errno = 14") and the first process dies with SIGSEGV. Unstable's (7.x) sizes it from the
# host. It needs a newer C library than bookworm's, so both packages are downloaded through apt
# with a private source list (the machine's own Debian mirror, suite unstable), unpacked here,
# and the kernel binary is pointed at the unpacked C library (interpreter and run path).
set -euo pipefail
UML_HOME="${UML_HOME:-/opt/vehicle-agent-uml}"
SUITE="${UML_SUITE:-sid}"

# The machine's own Debian mirror, as its sources name it (one-line or deb822 format).
mirror=$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
               /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } \
         | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }')
[ -n "$mirror" ] || { echo "install-uml: no Debian mirror in the apt sources" >&2; exit 1; }

apt_dir="$UML_HOME/apt"
rm -rf "$apt_dir" && mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SUITE main" \
    > "$apt_dir/sources.list"
apt_options=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir"
    -o "Dir::Cache::archives=$apt_dir/archives" -o APT::Sandbox::User=root
)
apt-get "${apt_options[@]}" update -qq
(cd "$apt_dir/archives" && apt-get "${apt_options[@]}" download -qq user-mode-linux libc6)

root="$UML_HOME/root"
rm -rf "$root" && mkdir -p "$root"
for deb in "$apt_dir"/archives/*.deb; do
    dpkg-deb -x "$deb" "$root"
done
libs="$root/usr/lib/x86_64-linux-gnu"
cp "$root/usr/bin/linux.uml" "$UML_HOME/linux.uml"
patchelf --set-interpreter "$libs/ld-linux-x86-64.so.2" --set-rpath "$libs" "$UML_HOME/linux.uml"
rm -rf "$apt_dir"
ln -sfn "$(ls -d "$root"/usr/lib/uml/modules/* | head -1)" "$UML_HOME/modules"
echo "install-uml: $("$UML_HOME/linux.uml" --version 2>&1 | head -1) in $UML_HOME"
