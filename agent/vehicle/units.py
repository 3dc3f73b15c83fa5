"""Unit spellings and conversions, for check-config's DBC-unit-versus-VSS-unit warning.

DBC files spell units freely (`kph`, `km/h`, `degC`, `°C`, `Celsius`, `%`); VSS spells them
one way (its units.yaml). `canonical` maps common spellings onto the VSS spelling, and
`conversion` gives the linear transform (scale, offset) that turns a value in one unit into
another of the same quantity.
"""

from __future__ import annotations

# VSS spelling -> (quantity, a, b): a value x in this unit is x * a + b in the quantity's base.
_UNITS: dict[str, tuple[str, float, float]] = {
    "m": ("length", 1.0, 0.0),
    "km": ("length", 1000.0, 0.0),
    "cm": ("length", 0.01, 0.0),
    "mm": ("length", 0.001, 0.0),
    "mi": ("length", 1609.344, 0.0),
    "km/h": ("speed", 1.0, 0.0),
    "m/s": ("speed", 3.6, 0.0),
    "mph": ("speed", 1.609344, 0.0),
    "Celsius": ("temperature", 1.0, 0.0),
    "Fahrenheit": ("temperature", 5 / 9, -160 / 9),
    "K": ("temperature", 1.0, -273.15),
    "kPa": ("pressure", 1.0, 0.0),
    "Pa": ("pressure", 0.001, 0.0),
    "hPa": ("pressure", 0.1, 0.0),
    "mbar": ("pressure", 0.1, 0.0),
    "bar": ("pressure", 100.0, 0.0),
    "psi": ("pressure", 6.894757293168361, 0.0),
    "s": ("time", 1.0, 0.0),
    "ms": ("time", 0.001, 0.0),
    "min": ("time", 60.0, 0.0),
    "h": ("time", 3600.0, 0.0),
    "day": ("time", 86400.0, 0.0),
    "V": ("voltage", 1.0, 0.0),
    "mV": ("voltage", 0.001, 0.0),
    "A": ("current", 1.0, 0.0),
    "mA": ("current", 0.001, 0.0),
    "W": ("power", 1.0, 0.0),
    "kW": ("power", 1000.0, 0.0),
    "Wh": ("energy", 1.0, 0.0),
    "kWh": ("energy", 1000.0, 0.0),
    "Ah": ("charge", 1.0, 0.0),
    "percent": ("ratio", 1.0, 0.0),
    "degrees": ("angle", 1.0, 0.0),
    "rpm": ("rotation", 1.0, 0.0),
    "Nm": ("torque", 1.0, 0.0),
    "l": ("volume", 1.0, 0.0),
    "kg": ("mass", 1.0, 0.0),
    "g": ("mass", 0.001, 0.0),
}

# Lower-cased spellings seen in DBC files -> the VSS spelling.
_ALIASES: dict[str, str] = {
    "kph": "km/h",
    "kmh": "km/h",
    "kmph": "km/h",
    "km/hr": "km/h",
    "km/h": "km/h",
    "mps": "m/s",
    "degc": "Celsius",
    "deg c": "Celsius",
    "°c": "Celsius",
    "c": "Celsius",
    "celsius": "Celsius",
    "degf": "Fahrenheit",
    "°f": "Fahrenheit",
    "fahrenheit": "Fahrenheit",
    "kelvin": "K",
    "%": "percent",
    "pct": "percent",
    "percent": "percent",
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
    "kilometer": "km",
    "kilometers": "km",
    "kilometre": "km",
    "kilometres": "km",
    "miles": "mi",
    "mile": "mi",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "msec": "ms",
    "mins": "min",
    "minute": "min",
    "minutes": "min",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "d": "day",
    "days": "day",
    "volt": "V",
    "volts": "V",
    "amp": "A",
    "amps": "A",
    "ampere": "A",
    "watt": "W",
    "watts": "W",
    "deg": "degrees",
    "degree": "degrees",
    "°": "degrees",
    "1/min": "rpm",
    "n.m": "Nm",
    "n*m": "Nm",
    "liter": "l",
    "litre": "l",
}
_BY_LOWER = {name.lower(): name for name in _UNITS}


def canonical(unit: str | None) -> str | None:
    """The VSS spelling of `unit`, or the text itself (stripped) when it is not known."""
    if unit is None:
        return None
    text = unit.strip()
    if not text:
        return None
    if text in _UNITS:
        return text
    lower = text.lower()
    return _ALIASES.get(lower) or _BY_LOWER.get(lower) or text


def conversion(source: str, target: str) -> tuple[float, float] | None:
    """(scale, offset) turning a value in `source` into `target`; None when not convertible."""
    a = _UNITS.get(source)
    b = _UNITS.get(target)
    if a is None or b is None or a[0] != b[0]:
        return None
    return a[1] / b[1], (a[2] - b[2]) / b[1]


def shown(number: float) -> str:
    """A factor as a person writes it: 1000, 0.27778, -17.7778."""
    return f"{number:.6g}"
