"""Shakespeare's 37 plays, shipped as package data, for character-level language models.

The texts (public domain; provenance and processing in data/shakespeare/NOTICE.md) are read
through importlib.resources, so they work from a wheel, a zip or a source tree, and are
checked against the sha256 in MANIFEST.json on every load: a damaged file is an error naming
it, not a silently different data set.

Splits are **by play**, so validation and test measure how well a model generalises to a play
it has never seen, not to unseen lines of plays it trained on. The lists below were drawn once
(`numpy.random.default_rng(SPLIT_SEED).permutation` of the sorted play identifiers: the first
four are validation, the next four test, the other 29 train) and are committed; nothing is
re-drawn at run time.

Vocabulary: VOCAB is fixed (79 symbols): index 0 is RARE, then newline, space, the 14
punctuation marks `! " & ' ( ) , - . : ; ? [ ]`, the digits and the letters of both cases.
That is every character of the plays except `/ _ @ { }` (31 occurrences in 4.85 million
characters, mostly typing slips such as `{` for `[`); those, and any character a user's own
text brings, are encoded as RARE and decoded as U+FFFD, so the model sees one "something
else" symbol rather than a vocabulary that depends on the text.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Dict, Tuple

import numpy as np

from drivers.errors import ConfigError

DATA_PACKAGE = "hil.datasets"
DATA_DIR = "data/shakespeare"

RARE = 0
RARE_GLYPH = "\ufffd"
VOCAB = RARE_GLYPH + "\n " + "!\"&'(),-.:;?[]" + string.digits + string.ascii_letters
VOCAB_SIZE = len(VOCAB)

SPLIT_SEED = 1564
VALIDATION_PLAYS: Tuple[str, ...] = (
    "cymbeline", "merry_wives_of_windsor", "much_ado_about_nothing", "tempest")
TEST_PLAYS: Tuple[str, ...] = (
    "henry_iv_part_1", "henry_vi_part_3", "othello", "twelfth_night")
TRAIN_PLAYS: Tuple[str, ...] = (
    "alls_well_that_ends_well", "antony_and_cleopatra", "as_you_like_it", "comedy_of_errors",
    "coriolanus", "hamlet", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
    "henry_vi_part_2", "henry_viii", "julius_caesar", "king_john", "king_lear",
    "loves_labours_lost", "macbeth", "measure_for_measure", "merchant_of_venice",
    "midsummer_nights_dream", "pericles", "richard_ii",
    "richard_iii", "romeo_and_juliet", "taming_of_the_shrew", "timon_of_athens",
    "titus_andronicus", "troilus_and_cressida", "two_gentlemen_of_verona", "winters_tale")
SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": TRAIN_PLAYS, "validation": VALIDATION_PLAYS, "test": TEST_PLAYS}

_ENCODE = np.full(256, RARE, dtype=np.uint8)
for _i, _c in enumerate(VOCAB[1:], start=1):
    _ENCODE[ord(_c)] = _i
_DECODE = np.array(list(VOCAB))


def encode(text: str) -> np.ndarray:
    """Vocabulary indices (uint8) of `text`; characters outside VOCAB become RARE."""
    raw = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out = np.full(raw.shape, RARE, dtype=np.uint8)
    ascii_ = raw < 256
    out[ascii_] = _ENCODE[raw[ascii_]]
    return out


def decode(codes: np.ndarray) -> str:
    """The text of vocabulary indices; RARE shows as U+FFFD."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= VOCAB_SIZE):
        raise ValueError(f"code outside the vocabulary of {VOCAB_SIZE}")
    return "".join(_DECODE[codes.astype(np.int64).ravel()].tolist())


@dataclass(frozen=True)
class Play:
    """One play as shipped: identifier, title, text."""

    slug: str
    title: str
    text: str

    def codes(self) -> np.ndarray:
        return encode(self.text)


@dataclass(frozen=True)
class Split:
    """The plays of one split, in the committed order."""

    name: str
    plays: Tuple[Play, ...]

    def codes(self) -> np.ndarray:
        """All plays of the split, one after another, a blank line between two plays."""
        return encode("\n".join(p.text for p in self.plays))

    @property
    def characters(self) -> int:
        return sum(len(p.text) for p in self.plays) + max(len(self.plays) - 1, 0)


def _data_dir():
    return resources.files(DATA_PACKAGE) / "data" / "shakespeare"


@lru_cache(maxsize=1)
def manifest() -> dict:
    """MANIFEST.json: every play's title, source and sha256 (written by the build)."""
    path = _data_dir() / "MANIFEST.json"
    try:
        return json.loads(path.read_text(encoding="ascii"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the Shakespeare manifest: {e}",
                          source=f"hil/datasets/{DATA_DIR}/MANIFEST.json") from None


def play_slugs() -> Tuple[str, ...]:
    """Identifiers of every shipped play, sorted."""
    return tuple(sorted(p["slug"] for p in manifest()["plays"]))


@lru_cache(maxsize=None)
def load_play(slug: str) -> Play:
    """One play, its bytes checked against the manifest."""
    entries = {p["slug"]: p for p in manifest()["plays"]}
    if slug not in entries:
        raise ConfigError(f"no play {slug!r}; the plays are {', '.join(sorted(entries))}",
                          key="data.plays")
    entry = entries[slug]
    name = f"{slug}.txt.gz"
    try:
        raw = gzip.decompress((_data_dir() / name).read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ConfigError(f"cannot read {name}: {e}",
                          source=f"hil/datasets/{DATA_DIR}/{name}") from None
    if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise ConfigError(f"{name} does not match its sha256 in MANIFEST.json",
                          source=f"hil/datasets/{DATA_DIR}/{name}")
    return Play(slug, entry["title"], raw.decode("ascii"))


def load_split(name: str) -> Split:
    """'train', 'validation' or 'test'."""
    if name not in SPLITS:
        raise ConfigError(f"no split {name!r}; the splits are {', '.join(SPLITS)}",
                          key="data.split")
    return Split(name, tuple(load_play(s) for s in SPLITS[name]))


def draw_split(seed: int = SPLIT_SEED) -> Dict[str, Tuple[str, ...]]:
    """How the committed lists were drawn; kept so the draw can be checked, never used."""
    slugs = play_slugs()
    perm = np.random.default_rng(seed).permutation(len(slugs))
    val = tuple(sorted(slugs[i] for i in perm[:4]))
    test = tuple(sorted(slugs[i] for i in perm[4:8]))
    train = tuple(s for s in slugs if s not in val and s not in test)
    return {"train": train, "validation": val, "test": test}
