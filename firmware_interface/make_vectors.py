"""Write (or check) the golden vectors: `python -m firmware_interface.make_vectors [--check]`.

Run after any deliberate protocol change, then review the diff of vectors/*.hex: every changed
byte is a change the firmware must follow.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from firmware_interface.vectors import VECTOR_DIR, check_vectors, write_vectors


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware_interface.make_vectors",
                                description="Write the protocol's golden test vectors as .hex")
    p.add_argument("directory", nargs="?", default=VECTOR_DIR,
                   help="output directory (default: the package's vectors/)")
    p.add_argument("--check", action="store_true",
                   help="only compare the files with the codec; exit 1 on any difference")
    args = p.parse_args(argv)
    if args.check:
        bad = check_vectors(args.directory)
        for name in bad:
            print(f"vector differs from the codec: {name}", file=sys.stderr)
        return 1 if bad else 0
    paths = write_vectors(args.directory)
    print(f"wrote {len(paths)} vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
