"""The contract's capability table: contract Capability <-> the INFO reply's capability bits."""
from __future__ import annotations

import pytest

from drivers.backend import (WIRE_CAPABILITY_BITS, Capability, capabilities_from_wire,
                             capabilities_to_wire)
from firmware_interface.protocol import Capability as WireCapability


def test_every_capability_has_its_own_wire_bit():
    assert set(WIRE_CAPABILITY_BITS) == set(Capability)
    bits = [int(b) for b in WIRE_CAPABILITY_BITS.values()]
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert set(WIRE_CAPABILITY_BITS.values()) == set(WireCapability)


@pytest.mark.parametrize("names", [set(), {"matvec"}, {"sim_clock", "program_read"},
                                   {c.value for c in Capability}])
def test_names_and_bits_round_trip(names):
    bits = capabilities_to_wire(names)
    assert isinstance(bits, WireCapability)
    assert capabilities_from_wire(bits) == frozenset(names)


def test_the_table_is_the_wire_protocol():
    assert capabilities_to_wire(["matvec", "sim_clock"]) == WireCapability.MATVEC | \
        WireCapability.SIM_CLOCK
    assert capabilities_from_wire(int(WireCapability.STATE_FILE)) == {"state_file"}


def test_an_unknown_name_is_refused_and_an_unknown_bit_ignored():
    with pytest.raises(ValueError, match="teleport"):
        capabilities_to_wire(["matvec", "teleport"])
    # a newer firmware may advertise abilities this host does not know
    assert capabilities_from_wire(int(WireCapability.MATVEC) | 0x8000) == {"matvec"}
