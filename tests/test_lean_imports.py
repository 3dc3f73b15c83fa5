"""The daemon imports what its configuration needs, when it needs it: the libraries a car may
never use (rich, OpenSSL's bindings without trusted keys, ISO-TP and UDS before the first DTC
read) stay out of a head unit's memory. bench/footprint.py measures what this saves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAZY = ("rich", "pygments", "jwt", "cryptography", "isotp", "udsoncan", "difflib")


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(done.stdout.split())


PRELUDE = (
    "import sys\n"
    "from agent import cli\n"
    "cli._without_rich()\n"
    "from agent import supervisor\n"
    "from agent.sim import runner, uds\n"
    "from agent.commands.auth import Verifier\n"
    "vehicle = cli._load_vehicle('config/demo.yaml')\n"
    "settings = vehicle.loaded.settings\n"
    "verifier = Verifier.from_settings(settings.vehicle_id, settings.commands)\n"
)
REPORT = "print(*sorted({m.split('.')[0] for m, mod in sys.modules.items() if mod}))\n"


def test_the_demo_configuration_starts_without_the_lazy_libraries() -> None:
    loaded = _modules_after(PRELUDE + REPORT)
    assert "agent" in loaded and "can" in loaded  # the probe really imported the daemon
    assert loaded.isdisjoint(LAZY), sorted(loaded & set(LAZY))


def test_each_lazy_library_arrives_when_it_is_used() -> None:
    code = (
        PRELUDE
        + (
            "from agent.maintenance.diagnostics import dtc_request, IsoTpChannel\n"
            "dtc_request(0xFF)\n"
            "channel = IsoTpChannel(0x7E0, 0x7E8, lambda msg: None)\n"
            "assert not channel.active\n"
            "channel.layer.send(b'\\x19\\x02\\xff')\n"
            "channel.layer.process()\n"
            "assert channel.active\n"
            "try:\n"
            "    verifier.verify(b'not-a-token', 0.0)\n"
            "except Exception as exc:\n"
            "    assert getattr(exc, 'reason', None) == 'MALFORMED', exc\n"
        )
        + REPORT
    )
    loaded = _modules_after(code)
    assert {"isotp", "udsoncan", "jwt"} <= loaded
    assert "rich" not in loaded


def test_a_trusted_key_loads_the_signature_library(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from agent.commands.keys import keygen\n"
        "from agent.config import CommandSettings\n"
        "from agent.commands.auth import Verifier\n"
        f"_, public = keygen('k', __import__('pathlib').Path({str(tmp_path)!r}))\n"
        "for name in [m for m in sys.modules if m.split('.')[0] in ('jwt', 'cryptography')]:\n"
        "    del sys.modules[name]\n"
        "settings = CommandSettings.model_validate(\n"
        "    {'trust': [{'kid': 'k', 'public_key': public, 'allow': ['hvac.*']}]})\n"
        "verifier = Verifier.from_settings('V', settings)\n"
        "assert type(verifier.keys['k'].key).__name__.startswith('Ed25519PublicKey')\n"
    ) + REPORT
    # Both with the key, not on the first command (whose `accepted` would wait for them).
    assert {"cryptography", "jwt"} <= _modules_after(code)
