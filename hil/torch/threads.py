"""torch's intra-op thread count, set for a block and put back after.

The count is process-wide and it changes torch's float32 sums (how a convolution or a matrix
product splits its additions), so code that sets it must not leave it changed: a study or a
benchmark called in-process would otherwise change the results of whatever runs after it
in that process (a test's in-process reference run against a `pcm-hil train` subprocess).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block (None: the count is left as it is)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
