"""Every command shown in a ```sh block of README.md, docs/ and examples/ works when copied:
each block runs in bash (`set -e`) in a fresh folder holding copies of config/ and dbc/, the
blocks of one file in order in the same folder (a key made by one block is signed with by the
next). A block whose first line is a `# illustrative` comment is shown, not run: it needs a
broker, a running agent, SocketCAN, root or a long run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.configs import ROOT

FILES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*/README.md")]
)
_BLOCK = re.compile(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    file: Path
    line: int
    text: str

    @property
    def illustrative(self) -> bool:
        first = self.text.lstrip().split("\n", 1)[0]
        return re.match(r"#\s*illustrative\b", first) is not None


def blocks(file: Path) -> list[Block]:
    text = file.read_text()
    return [
        Block(file, text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)
    ]


def _runnable_files() -> list[Path]:
    return [f for f in FILES if any(not b.illustrative for b in blocks(f))]


@pytest.mark.parametrize("file", _runnable_files(), ids=lambda f: str(f.relative_to(ROOT)))
def test_every_shell_block_runs(file: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "dbc", tmp_path / "dbc")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["EDITOR"] = "true"  # `$EDITOR config/...` opens nothing
    env.pop("VIRTUAL_ENV", None)
    for block in blocks(file):
        if block.illustrative:
            continue
        # A block shares the folder (and exported variables, through a file) with the next.
        script = "set -e\n[ -f .docs-env ] && . ./.docs-env\n" + block.text
        script += "\nexport -p > .docs-env\n"
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        where = f"{file.relative_to(ROOT)}:{block.line}"
        assert done.returncode == 0, (
            f"{where}: the block failed (exit {done.returncode}); mark it `# illustrative` only "
            f"if it cannot run here\n{block.text}\n--- stderr\n{done.stderr[-3000:]}"
        )


def test_blocks_are_found_and_most_that_can_run_do() -> None:
    """The test above is not vacuous: the runnable verbs have runnable examples."""
    runnable = "\n".join(b.text for f in FILES for b in blocks(f) if not b.illustrative)
    for verb in ("check-config", "replay", "simulate", "keygen", "sign", "plan-charge", "--help"):
        assert f"{verb}" in runnable, f"no runnable example shows {verb}"
    assert "illustrative" in "".join(b.text for f in FILES for b in blocks(f))
