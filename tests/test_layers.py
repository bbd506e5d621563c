"""BackendLayer: a backend over another one, every contract method passed down explicitly."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.errors import AddressError, ChipError
from drivers.geometry import Geometry
from drivers.layers import BackendLayer
from drivers.pulse import PulseSpec
from sim_backend.sim_chip import SimulatedChip

GEO = Geometry(1, 16, 16)


def twins(seed: int = 4):
    return (SimulatedChip(geometry=GEO, seed=seed),
            SimulatedChip(geometry=GEO, seed=seed))


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def test_every_contract_method_reaches_the_inner_backend_unchanged(tmp_path):
    """A bare layer is invisible: the same commands through it and straight to a twin chip
    give the same answers bit for bit and leave the same chip."""
    inner, twin = twins()
    layer = BackendLayer(inner)
    assert layer.inner is inner
    assert layer.info() == twin.info()
    a = np.arange(30, dtype=np.uint32)
    n = np.arange(30) % 4
    for be in (layer, twin):
        be.program(a, n, PulseSpec.set())
    assert np.array_equal(bits(layer.read(a)), bits(twin.read(a)))
    assert np.array_equal(bits(layer.program_read(a[::2], np.ones(15, np.int64),
                                                  PulseSpec.set())),
                          bits(twin.program_read(a[::2], np.ones(15, np.int64),
                                                 PulseSpec.set())))
    block = a[:12].reshape(3, 4)
    x = np.array([0.1, -0.2, 0.05, 0.3])
    assert np.array_equal(bits(layer.matvec(block, x)), bits(twin.matvec(block, x)))
    assert np.array_equal(bits(layer.read_exact(a)), bits(twin.read_exact(a)))
    assert inner.counters == twin.counters and inner.clock_s == twin.clock_s
    layer.safe_state()
    layer.close()
    with pytest.raises(ChipError, match="closed"):
        inner.read(a)


def test_program_read_goes_down_whole():
    """A chip that combines program and read gets one program_read, not program + read:
    the layer does not fall back to the contract's default."""
    calls = []

    class Recording(SimulatedChip):
        def program(self, *args):
            calls.append("program")
            super().program(*args)

        def program_read(self, *args):
            calls.append("program_read")
            return super().program_read(*args)

    chip = Recording(geometry=GEO, seed=1)
    BackendLayer(chip).program_read(np.array([1, 2, 3]), np.ones(3, np.int64), PulseSpec.set())
    assert calls[0] == "program_read"


def test_nothing_is_forwarded_by_attribute_lookup():
    """Abilities of the inner backend are found with find_ability, never through the layer."""
    layer = BackendLayer(SimulatedChip(geometry=GEO, seed=0))
    for name in ("clock_s", "advance_clock", "save_state", "counters", "limits"):
        assert not hasattr(layer, name), name


def test_a_layer_wraps_a_chip_backend_only():
    with pytest.raises(TypeError, match="wraps a ChipBackend"):
        BackendLayer(object())   # type: ignore[arg-type]


def test_the_inner_backends_errors_come_through_unchanged():
    layer = BackendLayer(SimulatedChip(geometry=GEO, seed=0))
    with pytest.raises(AddressError) as e:
        layer.read(np.array([3, GEO.n_devices + 5]))
    assert e.value.command == "READ" and list(e.value.devices) == [GEO.n_devices + 5]
