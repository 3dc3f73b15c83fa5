"""The built-in VSS 6.0 catalog and overlays in the standard's .vspec format."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from agent.vehicle.catalog import builtin, with_overlays


def test_the_builtin_catalog_is_vss_6_0_with_every_leaf() -> None:
    catalog = builtin("6.0")
    assert catalog.release == "6.0"
    assert len(catalog.leaves) == 1267  # the v6.0 export's signals and attributes
    odometer = catalog.get("Vehicle.TraveledDistance")
    assert odometer is not None
    assert (odometer.type, odometer.datatype, odometer.unit) == ("sensor", "uint32", "m")
    assert odometer.bounds == (0, 0xFFFF_FFFF)
    soc = catalog.get("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current")
    assert soc is not None and (soc.kind, soc.min, soc.max) == ("float", 0, 100)
    state = catalog.get("Vehicle.LowVoltageSystemState")
    assert state is not None and state.allowed is not None and "ACC" in state.allowed
    old = "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected"
    assert catalog.get(old) is None  # moved under Charging.ChargingPort in VSS 6.0
    assert catalog.suggest(old) == (
        "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition"
        ".IsChargingCableConnected"
    )


def test_the_data_file_ships_with_its_licence_notice() -> None:
    data = resources.files("agent.vehicle") / "data"
    notice = (data / "NOTICE.md").read_text(encoding="utf-8")
    assert "Mozilla Public License" in notice and "vss-tools" in notice
    body = json.loads(gzip.decompress((data / "vss-6.0.json.gz").read_bytes()))
    assert body["release"] == "6.0" and "vss-tools" in body["generator"]


def test_overlays_add_refine_and_delete(tmp_path: Path) -> None:
    overlay = tmp_path / "car.vspec"
    overlay.write_text(
        "# an OEM's additions\n"
        "Vehicle.Custom:\n  type: branch\n  description: ours\n"
        "Vehicle.Custom.Mode:\n  type: sensor\n  datatype: string\n  allowed: [ECO, SPORT]\n"
        "Vehicle.Speed:\n  max: 250\n  comment: limited\n"
        "Vehicle.Cabin.Sunroof:\n  delete: true\n"
    )
    catalog, problems = with_overlays(builtin(), [overlay])
    assert problems == []
    mode = catalog.get("Vehicle.Custom.Mode")
    assert mode is not None and mode.allowed == ("ECO", "SPORT")
    speed = catalog.get("Vehicle.Speed")
    assert speed is not None and (speed.max, speed.unit) == (250, "km/h")
    assert not any(p.startswith("Vehicle.Cabin.Sunroof.") for p in catalog.leaves)
    assert builtin().get("Vehicle.Cabin.Sunroof.Position") is not None  # the base is untouched


def test_unsupported_overlay_features_are_problems_with_lines(tmp_path: Path) -> None:
    overlay = tmp_path / "bad.vspec"
    overlay.write_text(
        "Vehicle.Custom.Seat:\n  type: branch\n  instances: [Row1, Row2]\n"
        "Vehicle.Custom.New:\n  datatype: float\n"
        "Vehicle.Custom.Other:\n  type: sensor\n  datatype: float\n  min: low\n"
    )
    _, problems = with_overlays(builtin(), [overlay])
    assert [(p.line, p.key) for p in problems] == [
        (1, "Vehicle.Custom.Seat"),
        (4, "Vehicle.Custom.New"),
        (6, "Vehicle.Custom.Other"),
    ]
    assert "instances" in problems[0].message
    assert "type must be one of" in problems[1].message
    assert "min must be a number" in problems[2].message
