"""Simulated hardware: the PCM device model, the simulated chip and the firmware emulator."""
from sim_backend.emulator import EmulatorServer, FaultConfig, LinkModel
from sim_backend.firmware import Firmware
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import (STATE_BYTES_PER_DEVICE, SimChipSpec, SimLimits, SimTiming,
                                  SimulatedChip)

__all__ = ["EmulatorServer", "FaultConfig", "Firmware", "LinkModel", "PcmModel",
           "STATE_BYTES_PER_DEVICE", "SimChipSpec", "SimLimits", "SimTiming", "SimulatedChip"]
