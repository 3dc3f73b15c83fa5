"""The checkout stays clean: neither a test run nor a bench run leaves files behind that git
would offer to commit (outbox databases, broker configs, logs). Everything a run writes goes to
pytest's tmp_path or an ignored folder (out/, .uml/, .demo-state/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support.configs import ROOT


def untracked() -> set[str]:
    """Files git would report as new (ignored ones excluded), relative to the checkout."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {line[3:] for line in done.stdout.splitlines() if line.startswith("??")}


def _need_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI must run from a git checkout with git installed")
        pytest.skip("not a git checkout")


# Taken when this module is imported, that is at collection, before any test has run.
_AT_START: set[str] | None = None
if shutil.which("git") and (ROOT / ".git").exists():
    _AT_START = untracked()


def test_bench_runs_leave_no_untracked_files() -> None:
    """bench/decode.py, bench/replay.py and bench/outbox.py (small runs) write only under
    ignored folders or the system's temporary one."""
    _need_git()
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        if os.environ.get("CI"):
            raise RuntimeError("mosquitto is required in CI")
        pytest.skip("bench/outbox.py needs mosquitto")
    before = untracked()
    for args in (
        ["bench/decode.py", "--frames", "2000", "--repeat", "1"],
        ["bench/replay.py", "--frames", "2000", "--repeat", "1"],
        ["bench/outbox.py", "--appends", "20", "--samples", "200"],
    ):
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    assert untracked() - before == set()


@pytest.mark.last
def test_the_run_left_no_untracked_files() -> None:
    """Runs after every other test (conftest orders it last): nothing new is untracked."""
    _need_git()
    assert _AT_START is not None
    assert untracked() - _AT_START == set()
