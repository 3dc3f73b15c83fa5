"""The reference vehicle's ECUs: state -> frames of the reference DBC, command frames -> state.

Only messages this module knows are simulated; a configuration with other DBC files simply
gets fewer frames. Values are clamped to each signal's range before encoding, as a real ECU
saturates rather than wraps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cantools.database.can import Message, Signal

from agent.sim import physics
from agent.sim.physics import VehicleState
from agent.vehicle.dbc import raw_range

AGENT_NODES = frozenset({"TCU"})  # the telematics unit: messages it sends are the agent's

Values = dict[str, Any]


def _bms_status(s: VehicleState, n: int) -> Values:
    return {
        "BMS_SOC": s.soc,
        "BMS_SOH": s.soh,
        "BMS_PackVoltage": s.pack_voltage,
        "BMS_PackCurrent": s.pack_current,
        "BMS_PackTempAvg": s.pack_temp,
        "BMS_StatusCounter": n % 16,
    }


def _bms_range(s: VehicleState, n: int) -> Values:
    return {
        "BMS_RangeEst": s.range_km,
        "BMS_EnergyRemaining": s.energy_kwh,
        "BMS_CapacityNominal": s.capacity_kwh,
    }


def _bms_cells(s: VehicleState, n: int) -> Values:
    values: Values = {
        "BMS_CellVoltMin": s.cell_voltage - 0.004,
        "BMS_CellVoltMax": s.cell_voltage + 0.005,
        "BMS_CellTempMin": s.pack_temp - 1.0,
        "BMS_CellTempMax": s.pack_temp + 2.0,
        "BMS_IsolationRes": 2200,
        "BMS_BalancingMask": 0x0000_0410 if s.charge_state == "CHARGING" else 0,
    }
    for module in range(1, 9):
        values[f"BMS_ModuleTemp{module}"] = s.pack_temp + (module % 3) - 1
    return values


def _obc_status(s: VehicleState, n: int) -> Values:
    return {
        "OBC_CableState": s.cable,
        "OBC_ChargeState": s.charge_state,
        "OBC_ChargePower": s.charge_power,
        "OBC_ChargeLimit": s.charge_limit,
        "OBC_ACVoltage": 230 if s.cable != "DISCONNECTED" else 0,
        "OBC_ChargeTimeRemaining": s.charge_minutes_left,
    }


def _vcu_status(s: VehicleState, n: int) -> Values:
    return {
        "VCU_VehicleSpeed": s.speed,
        "VCU_GearPos": s.gear,
        "VCU_ParkLock": "ENGAGED" if s.park_lock else "RELEASED",
        "VCU_Ignition": s.ignition,
        "VCU_Odometer": s.odometer,
        "VCU_Counter": n % 16,
    }


def _hvac_status(s: VehicleState, n: int) -> Values:
    mode = "OFF"
    if s.climate_on:
        mode = "PRECONDITION" if s.mode != "driving" else "AUTO"
    return {
        "HVAC_CabinTemp": s.cabin_temp,
        "HVAC_ExteriorTemp": s.exterior_temp,
        "HVAC_TargetTemp": s.target_temp,
        "HVAC_ClimateActive": "ON" if s.climate_on else "OFF",
        "HVAC_ACActive": "ON" if s.ac_active else "OFF",
        "HVAC_HeaterActive": "ON" if s.heater_active else "OFF",
        "HVAC_FanLevel": s.fan_level,
        "HVAC_Mode": mode,
        "HVAC_Counter": n % 16,
    }


_TPMS = ("FL", "FR", "RL", "RR")


def _tpms_status(s: VehicleState, n: int) -> Values:
    wheel = n % 4  # one wheel per frame, in turn, as TPMS receivers do
    suffix = _TPMS[wheel]
    return {
        "TPMS_WheelIndex": wheel,
        f"TPMS_Pressure{suffix}": s.tyres_bar[wheel],
        f"TPMS_Temp{suffix}": s.exterior_temp + 4.0 + s.speed / 20.0,
        "TPMS_SensorBatteryLow": "OK",
    }


def _svc_maintenance(s: VehicleState, n: int) -> Values:
    low_tyre = min(s.tyres_bar) < 2.0
    due = s.service_due
    return {
        "SVC_DistanceToService": round(s.distance_to_service),
        "SVC_TimeToService": int(s.days_to_service // 1),
        "SVC_ServiceDue": due,
        "SVC_LvBatteryVoltage": s.lv_voltage,
        "SVC_WarnBrake": "OFF",
        "SVC_WarnBattery": "ON" if s.lv_voltage < 11.8 else "OFF",
        "SVC_WarnTyre": "ON" if low_tyre else "OFF",
        "SVC_WarnService": "ON" if due in ("DUE", "OVERDUE") else "OFF",
        "SVC_WarnPowertrain": "OFF",
    }


REPORTS: dict[str, Callable[[VehicleState, int], Values]] = {
    "BMS_Status": _bms_status,
    "BMS_Range": _bms_range,
    "BMS_CellStats": _bms_cells,
    "OBC_Status": _obc_status,
    "VCU_Status": _vcu_status,
    "HVAC_Status": _hvac_status,
    "TPMS_Status": _tpms_status,
    "SVC_Maintenance": _svc_maintenance,
}


def _clamp(signal: Signal, value: Any) -> Any:
    if isinstance(value, str) or (signal.conversion.choices and not isinstance(value, float)):
        return value
    conv = signal.conversion
    low_raw, high_raw = raw_range(signal)
    bounds = sorted((low_raw * conv.scale + conv.offset, high_raw * conv.scale + conv.offset))
    if signal.minimum is not None:
        bounds[0] = max(bounds[0], signal.minimum)
    if signal.maximum is not None:
        bounds[1] = min(bounds[1], signal.maximum)
    return min(bounds[1], max(bounds[0], value))


@dataclass(slots=True)
class Ecu:
    """One periodic message of the reference vehicle."""

    message: Message
    report: Callable[[VehicleState, int], Values]
    period_s: float
    count: int = 0

    def encode(self, state: VehicleState) -> bytes:
        values = self.report(state, self.count)
        self.count += 1
        for name in list(values):
            values[name] = _clamp(self.message.get_signal_by_name(name), values[name])
        data: bytes = self.message.encode(values, strict=False, padding=True)
        return data


def ecus_for(messages: list[Message]) -> list[Ecu]:
    """The simulated ECUs among `messages`: those the reference vehicle knows, not the TCU's."""
    found = []
    for message in messages:
        report = REPORTS.get(message.name)
        if report is None or AGENT_NODES.intersection(message.senders):
            continue
        period = (message.cycle_time or 1000) / 1000.0
        found.append(Ecu(message=message, report=report, period_s=period))
    return found


def handle_command(state: VehicleState, name: str, values: Values) -> str | None:
    """Apply a decoded command frame; a short description of what changed, or None."""
    if name == "TCU_ClimateRequest":
        cmd = str(values.get("TCU_ClimateCmd"))
        if cmd == "ON":
            target = float(values.get("TCU_ClimateTargetTemp", state.target_temp))
            physics.climate(state, on=True, target=target, fan=int(values["TCU_ClimateFanLevel"]))
            return f"climate on, target {state.target_temp:.1f} degC"
        if cmd == "OFF":
            physics.climate(state, on=False, target=None, fan=None)
            return "climate off"
    elif name == "TCU_ChargeRequest":
        cmd = str(values.get("TCU_ChargeCmd"))
        if cmd == "START":
            ok = physics.start_charging(state)
            return "charging started" if ok else "charge start refused (no cable)"
        if cmd == "STOP":
            physics.stop_charging(state)
            return "charging stopped"
    elif name == "TCU_ChargeLimitRequest" and str(values.get("TCU_ChargeLimitValid")) == "VALID":
        physics.set_charge_limit(state, int(values["TCU_ChargeLimitReq"]))
        return f"charge limit {state.charge_limit} %"
    elif name == "TCU_ChargePowerRequest":
        if str(values.get("TCU_ChargePowerMode")) == "LIMITED":
            physics.set_power_cap(state, float(values["TCU_ChargePowerMax"]))
            return f"charge power at most {state.power_cap_kw:.1f} kW"
        physics.set_power_cap(state, None)
        return "charge power unlimited"
    return None
