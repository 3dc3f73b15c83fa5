"""vehicle-agent: an in-vehicle telematics agent (CAN/DBC -> COVESA VSS -> MQTT)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vehicle-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
