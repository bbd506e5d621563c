"""Drivers: the ChipBackend contract and the drivers of real hardware."""
from drivers.abilities import (AdcReadout, ClockedBackend, GuardedBackend, SequencedBackend,
                               StatefulBackend, find_ability)
from drivers.backend import Capability, ChipBackend, ChipInfo
from drivers.errors import (AddressError, ChipError, ChipFaultError, ConfigError, HilError,
                            LinkError,
                            NotSupportedError, ProtocolError, SafetyLimitError)
from drivers.geometry import ADDRESS_DTYPE, Geometry, check_unique
from drivers.layers import BackendLayer
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET, PulseKind, PulseSpec

__all__ = [
    "ADDRESS_DTYPE", "AddressError", "AdcReadout", "BackendLayer", "Capability", "ChipBackend",
    "ChipError", "ChipFaultError", "ChipInfo", "ClockedBackend", "ConfigError", "DEFAULT_RESET",
    "DEFAULT_SET", "Geometry", "GuardedBackend", "HilError", "LinkError", "NotSupportedError",
    "ProtocolError", "PulseKind", "PulseSpec", "SafetyLimitError", "SequencedBackend",
    "StatefulBackend", "check_unique", "find_ability",
]
