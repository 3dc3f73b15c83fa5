"""Small filesystems made by a test: a size-limited tmpfs (root only), remounted read-only
and back, unmounted at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "400k") at `where`; skipped where mounting is impossible
    (not root, no mount privilege), except under CI where nothing may skip."""
    where.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"cannot mount a tmpfs: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def remount(where: Path, mode: str) -> None:
    """`mode` "ro" or "rw"."""
    done = _mount("-o", f"remount,{mode}", str(where))
    assert done.returncode == 0, done.stderr


def free_bytes(where: Path) -> int:
    stat = os.statvfs(where)
    return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def ext4(where: Path, image: Path, size_mb: int = 4) -> Iterator[Path]:
    """An ext4 filesystem in a file on a loop device, mounted with errors=remount-ro (what a
    head unit's eMMC does on I/O errors); `fs_error()` makes the kernel take it read-only."""
    where.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0 or loop.returncode != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"cannot make a loop device: {made.stderr}{loop.stderr}")
        pytest.skip(f"cannot make a loop device here: {made.stderr}{loop.stderr}")
    device = loop.stdout.strip()
    try:
        done = _mount("-o", "errors=remount-ro", device, str(where))
        assert done.returncode == 0, done.stderr
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


@contextlib.contextmanager
def repaired(where: Path, image: Path) -> Iterator[Path]:
    """What an operator does once ext4 has taken the filesystem at `where` read-only on an
    error (the kernel will not remount it rw: docs/reliability.md): a copy of its image,
    checked with e2fsck, mounted rw in its place. The broken mount is detached lazily, so a
    running daemon keeps its open files on it (still readable) while the path leads to the
    repaired filesystem."""
    copy = image.with_name(f"{image.name}.repaired")
    shutil.copyfile(image, copy)
    fsck = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1, 2), fsck.stdout + fsck.stderr  # 1, 2: errors corrected
    loop = subprocess.run(["losetup", "-f", "--show", str(copy)], capture_output=True, text=True)
    assert loop.returncode == 0, loop.stderr
    device = loop.stdout.strip()
    try:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=True)
        done = _mount("-o", "errors=remount-ro", device, str(where))
        assert done.returncode == 0, done.stderr
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        copy.unlink(missing_ok=True)


def fs_error(where: Path) -> None:
    """Report an error on the ext4 filesystem at `where`: the kernel remounts it read-only
    (`emergency_ro`; only an unmount and fsck bring it back, as on a real head unit)."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    device = Path(next(line.split()[0] for line in mounts if line.split()[1] == str(where)))
    Path(f"/sys/fs/ext4/{device.name}/trigger_fs_error").write_text("test\n")
