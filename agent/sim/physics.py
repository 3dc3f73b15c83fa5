"""The reference EV as plain state and a pure step function: no bus, no clock, no I/O.

Figures are those of a mid-size EV (75 kWh pack of 96 cells in series, 11 kW AC charger,
about 17 kWh/100 km); they only need to be plausible, not a particular car.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

CELLS_IN_SERIES = 96
CONSUMPTION_KWH_PER_KM = 0.17
CHARGE_EFFICIENCY = 0.92
CLIMATE_POWER_KW = 1.8
AUX_POWER_KW = 0.3
WHEELS = ("front_left", "front_right", "rear_left", "rear_right")


@dataclass(slots=True)
class VehicleState:
    """Everything the ECU models report. Units are the DBC's (km/h, bar, degC, kW, days)."""

    mode: str = "parked"  # parked | driving | plugged_in: what the driver is doing
    soc: float = 62.0
    soh: float = 96.5
    capacity_kwh: float = 75.0
    pack_temp: float = 21.0
    # A fault for scenarios: the pack heats this fast while charging (a failing coolant pump).
    pack_heating_c_per_min: float = 0.0
    pack_current: float = 0.0
    speed: float = 0.0
    gear: str = "P"
    ignition: str = "OFF"
    odometer: float = 18_432.0
    cabin_temp: float = 24.0
    exterior_temp: float = 18.0
    target_temp: float = 21.0
    climate_on: bool = False
    fan_level: int = 0
    cable: str = "DISCONNECTED"
    charge_state: str = "IDLE"
    charger_kw: float = 11.0
    charge_power: float = 0.0
    charge_limit: int = 80
    # The grid's cap on charging power (TCU_ChargePowerRequest); None: the charger's own.
    power_cap_kw: float | None = None
    tyres_bar: list[float] = field(default_factory=lambda: [2.5, 2.5, 2.4, 2.4])
    tyre_leak_bar_per_h: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    lv_voltage: float = 12.6
    # Stored diagnostic trouble codes per ECU: (3-byte code, status byte).
    dtcs: dict[str, list[tuple[int, int]]] = field(
        default_factory=lambda: {
            "bms": [(0x0A1B2C, 0x2F)],
            "hvac": [(0xC15500, 0x09), (0xB10013, 0x28), (0x123456, 0x08)],
        }
    )
    distance_to_service: float = 4_200.0
    days_to_service: float = 95.0
    elapsed_s: float = 0.0

    # --- derived readings ---
    @property
    def pack_voltage(self) -> float:
        return CELLS_IN_SERIES * self.cell_voltage

    @property
    def cell_voltage(self) -> float:
        # A rough NMC open-circuit curve: 3.30 V empty, 4.18 V full, plus IR drop/rise.
        ocv: float = 3.30 + 0.88 * (self.soc / 100.0) ** 0.9
        return ocv + self.pack_current * 0.0008 / CELLS_IN_SERIES * 10

    @property
    def energy_kwh(self) -> float:
        return self.capacity_kwh * self.soh / 100.0 * self.soc / 100.0

    @property
    def range_km(self) -> float:
        return self.energy_kwh / CONSUMPTION_KWH_PER_KM

    @property
    def park_lock(self) -> bool:
        return self.gear == "P"

    @property
    def ac_active(self) -> bool:
        # Pre-conditioning runs the compressor (cooling or dehumidifying) whenever climate is on.
        return self.climate_on

    @property
    def heater_active(self) -> bool:
        return self.climate_on and self.cabin_temp < self.target_temp - 0.5

    @property
    def service_due(self) -> str:
        if self.distance_to_service < 0 or self.days_to_service < 0:
            return "OVERDUE"
        if self.distance_to_service < 500 or self.days_to_service < 7:
            return "DUE"
        if self.distance_to_service < 2000 or self.days_to_service < 30:
            return "DUE_SOON"
        return "NOT_DUE"

    @property
    def charge_minutes_left(self) -> int:
        if self.charge_state != "CHARGING" or self.charge_power <= 0:
            return 0
        need_kwh = max(0.0, self.charge_limit - self.soc) / 100.0 * self.capacity_kwh
        return round(need_kwh / (self.charge_power * CHARGE_EFFICIENCY) * 60)


def drive_speed(t: float) -> float:
    """A repeating 10-minute urban/extra-urban cycle with stops, km/h."""
    phase = t % 600.0
    if 270 <= phase < 290 or phase >= 580:  # a red light, and the end of the cycle
        return 0.0
    # Pull away over the first 10 s, then urban speeds; extra-urban after the stop.
    ramp = min(1.0, phase / 10.0)
    if phase < 270:
        return ramp * (45.0 + 15.0 * math.sin(phase / 23.0))
    return min(1.0, (phase - 290) / 10.0) * (95.0 + 10.0 * math.sin(phase / 37.0))


def apply_mode(state: VehicleState, mode: str) -> None:
    """Switch what the driver is doing (scenario start or event)."""
    state.mode = mode
    if mode == "driving":
        state.gear, state.ignition = "D", "ON"
        if state.cable != "DISCONNECTED":
            plug(state, connected=False)
    else:
        state.gear, state.speed = "P", 0.0
        state.ignition = "OFF"
    if mode == "plugged_in":
        plug(state, connected=True)
        start_charging(state)


def plug(state: VehicleState, *, connected: bool) -> None:
    if connected:
        state.cable = "CONNECTED"
    else:
        state.cable, state.charge_state, state.charge_power = "DISCONNECTED", "IDLE", 0.0


def start_charging(state: VehicleState) -> bool:
    """The charger's answer to a start request: only with the cable in, below the limit."""
    if state.cable == "DISCONNECTED" or state.mode == "driving":
        return False
    if state.soc >= state.charge_limit:
        state.charge_state = "COMPLETE"
        return True
    # Under a grid cap of 0 the session starts paused, and runs when the cap lifts.
    state.cable = "LOCKED"
    state.charge_state = "WAITING" if state.power_cap_kw == 0 else "CHARGING"
    return True


def stop_charging(state: VehicleState) -> None:
    if state.charge_state in ("CHARGING", "COMPLETE", "WAITING"):
        state.charge_state, state.charge_power = "IDLE", 0.0
        if state.cable == "LOCKED":
            state.cable = "CONNECTED"


def set_power_cap(state: VehicleState, cap_kw: float | None) -> None:
    """The charger's answer to a power request: draw at most `cap_kw`; 0 pauses a session
    (WAITING) and a higher cap, or none, resumes it."""
    state.power_cap_kw = None if cap_kw is None else max(0.0, cap_kw)
    if state.power_cap_kw == 0 and state.charge_state == "CHARGING":
        state.charge_state, state.charge_power = "WAITING", 0.0
    elif state.power_cap_kw != 0 and state.charge_state == "WAITING":
        state.charge_state = "CHARGING"


def set_charge_limit(state: VehicleState, limit: int) -> None:
    state.charge_limit = max(50, min(100, int(limit)))
    if state.charge_state == "COMPLETE" and state.soc < state.charge_limit - 1:
        state.charge_state = "CHARGING"


def climate(state: VehicleState, *, on: bool, target: float | None, fan: int | None) -> None:
    state.climate_on = on
    if on:
        if target is not None and 16.0 <= target <= 28.0:
            state.target_temp = target
        state.fan_level = fan if fan else 4  # 0 means automatic
    else:
        state.fan_level = 0


def _relax(value: float, goal: float, dt: float, tau: float) -> float:
    return goal + (value - goal) * math.exp(-dt / tau)


def step(state: VehicleState, dt: float, rng: random.Random | None = None) -> None:
    """Advance the physics by `dt` seconds."""
    if dt <= 0:
        return
    state.elapsed_s += dt
    if state.mode == "driving":
        state.speed = drive_speed(state.elapsed_s)
    distance = state.speed * dt / 3600.0
    state.odometer += distance
    state.distance_to_service -= distance
    state.days_to_service -= dt / 86_400.0

    # Charging: the charger tapers above 90 % and stops at the limit.
    if state.charge_state == "CHARGING":
        taper = 1.0 if state.soc < 90 else max(0.15, (100.0 - state.soc) / 10.0)
        state.charge_power = state.charger_kw * taper
        if state.power_cap_kw is not None:
            state.charge_power = min(state.charge_power, state.power_cap_kw)
        if state.soc >= state.charge_limit:
            state.charge_state, state.charge_power = "COMPLETE", 0.0
    else:
        state.charge_power = 0.0

    drain_kw = CONSUMPTION_KWH_PER_KM * state.speed
    if state.climate_on:
        drain_kw += CLIMATE_POWER_KW
    if state.ignition == "ON" or state.climate_on or state.charge_state == "CHARGING":
        drain_kw += AUX_POWER_KW
    net_kw = state.charge_power * CHARGE_EFFICIENCY - drain_kw
    usable = state.capacity_kwh * state.soh / 100.0
    state.soc = min(100.0, max(0.0, state.soc + net_kw * dt / 3600.0 / usable * 100.0))
    state.pack_current = net_kw * 1000.0 / max(1.0, state.pack_voltage)

    heat = abs(state.pack_current) / 150.0
    state.pack_temp = _relax(state.pack_temp, state.exterior_temp + 8.0 * heat, dt, 1800.0)
    if state.pack_heating_c_per_min and state.charge_state == "CHARGING":
        state.pack_temp = min(90.0, state.pack_temp + state.pack_heating_c_per_min * dt / 60.0)
    # Climate on: the cabin heads for the target in a few minutes; off: it drifts to outside.
    if state.climate_on:
        state.cabin_temp = _relax(state.cabin_temp, state.target_temp, dt, 240.0)
    else:
        state.cabin_temp = _relax(state.cabin_temp, state.exterior_temp, dt, 1800.0)

    for wheel, leak in enumerate(state.tyre_leak_bar_per_h):
        state.tyres_bar[wheel] = max(0.0, state.tyres_bar[wheel] - leak * dt / 3600.0)

    dcdc = state.ignition == "ON" or state.climate_on or state.charge_state == "CHARGING"
    state.lv_voltage = _relax(state.lv_voltage, 14.1 if dcdc else 12.5, dt, 60.0)
    if rng is not None:  # a little sensor noise so deadbands have something to do
        state.exterior_temp += rng.uniform(-0.002, 0.002) * dt
