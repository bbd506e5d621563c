"""Simulated hardware: the PCM device model, the simulated chip and (later) the emulator."""
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import STATE_BYTES_PER_DEVICE, SimLimits, SimTiming, SimulatedChip

__all__ = ["PcmModel", "STATE_BYTES_PER_DEVICE", "SimLimits", "SimTiming", "SimulatedChip"]
