"""Packing hook arguments into stored bytes (hil.run_log.packing): the one check of device
addresses and pulse counts, with the same bytes on the fast and the general path.
"""
from __future__ import annotations

import numpy as np
import pytest

from hil.run_log import RunLogError
from hil.run_log.packing import SMALL, address_bytes, pulse_count_bytes


@pytest.mark.parametrize("n", [0, 3, SMALL, SMALL + 1, 5000])
@pytest.mark.parametrize("dtype", ["<u4", ">u4", "<i8", "<u8", "<i4", "<u2"])
def test_addresses_of_any_integer_type_pack_to_little_endian_uint32(n, dtype):
    top = {"<u2": 65535}.get(dtype, 2**31 - 1)
    a = np.linspace(0, top, n).astype(dtype)
    b, k = address_bytes(a, "hook", "run.h5")
    assert k == n and b == a.astype("<u4").tobytes()
    grid = a[: n - n % 2].reshape(2, -1) if n >= 2 else a
    assert address_bytes(grid, "hook", "run.h5")[0] == grid.astype("<u4").tobytes()  # row-major
    assert address_bytes(a.tolist(), "hook", "run.h5") == (a.astype("<u4").tobytes(), n)


@pytest.mark.parametrize("n", [1, SMALL + 1])
def test_addresses_outside_uint32_are_refused_naming_the_hook(n):
    for bad, what in ((np.full(n, -1, np.int64), "outside 0..2\\*\\*32-1"),
                      (np.full(n, 2**32, np.int64), "outside 0..2\\*\\*32-1"),
                      (np.full(n, 2**40, np.uint64), "outside 0..2\\*\\*32-1"),
                      (np.full(n, 0.5), "must be integers, got float64")):
        with pytest.raises(RunLogError, match=f"run.h5: on_read: address(es)? {what}"):
            address_bytes(bad, "on_read", "run.h5")


@pytest.mark.parametrize("n", [3, SMALL + 1])
def test_pulse_counts_pack_to_uint16_and_are_checked(n):
    for dtype in ("<i8", "<u2", "<i4", "<f8"):
        c = (np.arange(n) % 7).astype(dtype)
        assert pulse_count_bytes(c, n, "hook", "p") == c.astype("<u2").tobytes()
    for bad in (np.full(n, 65536), np.full(n, -1), np.full(n, 1.5)):
        with pytest.raises(RunLogError, match="before_program at step 4: pulse counts must be "
                                              "integers in 0..65535"):
            pulse_count_bytes(bad, n, "before_program at step 4", "p")
    with pytest.raises(RunLogError, match=f"{n} addresses but {n + 1} pulse counts"):
        pulse_count_bytes(np.ones(n + 1, np.int64), n, "hook", "p")
