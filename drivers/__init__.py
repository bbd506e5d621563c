"""Drivers: the ChipBackend contract and the drivers of real hardware."""
from drivers.backend import Capability, ChipBackend, ChipInfo
from drivers.errors import (AddressError, ChipError, ChipFaultError, ConfigError, HilError,
                            LinkError,
                            NotSupportedError, ProtocolError, SafetyLimitError)
from drivers.geometry import ADDRESS_DTYPE, Geometry, check_unique
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET, PulseKind, PulseSpec

__all__ = [
    "ADDRESS_DTYPE", "AddressError", "Capability", "ChipBackend", "ChipError", "ChipFaultError",
    "ChipInfo", "ConfigError", "DEFAULT_RESET", "DEFAULT_SET", "Geometry", "HilError", "LinkError",
    "NotSupportedError", "ProtocolError", "PulseKind", "PulseSpec", "SafetyLimitError",
    "check_unique",
]
