"""Argument types shared by the sub-commands: one clear message for a bad number."""
from __future__ import annotations

import argparse
from typing import Any, Callable


def at_least(kind: type, minimum: float) -> Callable[[str], Any]:
    """An argparse type: a `kind` (int or float) no smaller than `minimum`."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    parse.__name__ = kind.__name__   # argparse names the type in its messages
    return parse


non_negative_int = at_least(int, 0)
positive_int = at_least(int, 1)
non_negative_float = at_least(float, 0.0)
