"""`keygen`: least privilege by construction. `--allow` is required and the printed trust
entry allows exactly the patterns given, in a form the configuration loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent import config
from tests.support.configs import CONFIG_DIR, DBC_DIR


def _keygen(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "keygen",
            "--kid",
            "fleet-app",
            "--out",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_allow_is_required(tmp_path: Path) -> None:
    done = _keygen(tmp_path)
    assert done.returncode == 2
    assert "--allow" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "fleet-app.pem").exists()


def test_a_bad_pattern_is_refused(tmp_path: Path) -> None:
    done = _keygen(tmp_path, "--allow", "hvac start")
    assert done.returncode == 2 and "not a command name or pattern" in done.stderr


def test_the_trust_entry_allows_exactly_what_was_asked(tmp_path: Path) -> None:
    done = _keygen(tmp_path, "--allow", "hvac.*", "state.snapshot")
    assert done.returncode == 0, done.stderr
    assert '"*"' not in done.stdout
    text = (CONFIG_DIR / "demo.yaml").read_text().replace("../dbc/", f"{DBC_DIR}/")
    head, _, tail = text.partition("  trust: []")
    tail = tail.split("\n", 1)[1]
    entry = done.stdout.split("  trust:\n", 1)[1]
    path = tmp_path / "agent.yaml"
    path.write_text(head + "  trust:\n" + entry + tail)
    loaded = config.load(path)
    (trust,) = loaded.settings.commands.trust
    assert trust.kid == "fleet-app"
    assert trust.allow == ["hvac.*", "state.snapshot"]
