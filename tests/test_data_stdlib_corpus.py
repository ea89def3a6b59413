"""The stdlib corpus: file selection, order, size cap and the stable split."""

import pathlib

import pytest

from llmos_jax.data import stdlib_corpus
from llmos_jax.errors import UserError


def _write(root: pathlib.Path, relpath: str, data: bytes) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def fake_stdlib(tmp_path: pathlib.Path) -> pathlib.Path:
    """A tiny stdlib-like tree with one file of every kind the scan must judge."""
    kept = {
        "zeta.py": b"z = 1\n",
        "alpha.py": b"import os\n",
        "pkg/mod.py": b"def f():\n    return 'h\xc3\xa9'\n",  # UTF-8 'é'.
        "pkg/README.txt": b"docs\n",
    }
    dropped = {
        "pkg/test/test_mod.py": b"assert True\n",
        "tests/t.py": b"assert True\n",
        "site-packages/thirdparty.py": b"x = 1\n",
        "__pycache__/alpha.py": b"x = 1\n",
        "idlelib/editor.py": b"x = 1\n",
        "binary.py": b"x = 1\n\x00\x01",
        "latin1.py": b"s = '\xe9'\n",  # Not UTF-8.
        "blank.py": b"  \n\n",
        "image.png": b"png",
    }
    for relpath, data in {**kept, **dropped}.items():
        _write(tmp_path, relpath, data)
    return tmp_path


def test_scan_keeps_text_sources_in_sorted_order(fake_stdlib):
    files = stdlib_corpus.corpus_files(fake_stdlib)

    assert [f.relpath for f in files] == ["alpha.py", "pkg/README.txt", "pkg/mod.py", "zeta.py"]
    assert files[2].text == "def f():\n    return 'hé'\n"
    assert files[2].num_bytes == 26


def test_max_bytes_keeps_the_longest_fitting_prefix(fake_stdlib):
    # alpha.py (10 bytes) + pkg/README.txt (5 bytes) fit; pkg/mod.py (26) does not.
    files = stdlib_corpus.corpus_files(fake_stdlib, max_bytes=15 + 25)

    assert [f.relpath for f in files] == ["alpha.py", "pkg/README.txt"]


def test_max_bytes_below_the_first_file_is_a_user_error(fake_stdlib):
    with pytest.raises(UserError, match="max_bytes=9"):
        stdlib_corpus.corpus_files(fake_stdlib, max_bytes=9)


def test_missing_or_empty_root_is_a_user_error(tmp_path):
    missing = tmp_path / "no_such_stdlib"
    with pytest.raises(UserError, match="no_such_stdlib"):
        stdlib_corpus.corpus_files(missing)
    empty = tmp_path / "void_dir"
    empty.mkdir()
    with pytest.raises(UserError, match="void_dir.*no text files|No text files.*void_dir"):
        stdlib_corpus.corpus_files(empty)


def test_split_is_pinned_to_the_path_hash():
    # Pinned so that a change of hash (e.g. to Python's salted hash()) fails here.
    assert stdlib_corpus.split_of("copy.py") == "validation"
    assert stdlib_corpus.split_of("collections/abc.py") == "validation"
    assert stdlib_corpus.split_of("os.py") == "train"
    assert stdlib_corpus.split_of("abc.py") == "train"


def test_unknown_split_is_a_user_error(fake_stdlib):
    with pytest.raises(UserError, match="'test'"):
        stdlib_corpus.documents("test", fake_stdlib)


def test_real_stdlib_corpus_is_deterministic_disjoint_and_capped():
    max_bytes = 2_000_000
    files = stdlib_corpus.corpus_files(max_bytes=max_bytes)
    again = stdlib_corpus.corpus_files(max_bytes=max_bytes)

    assert files == again
    relpaths = [f.relpath for f in files]
    assert relpaths == sorted(relpaths)
    assert not any(set(p.split("/")) & stdlib_corpus.EXCLUDED_DIR_NAMES for p in relpaths)
    total = sum(f.num_bytes for f in files)
    assert 1_500_000 < total <= max_bytes

    train = list(stdlib_corpus.documents("train", max_bytes=max_bytes))
    validation = list(stdlib_corpus.documents("validation", max_bytes=max_bytes))
    assert train and validation
    assert len(train) + len(validation) == len(files)
    by_split = {
        split: {f.relpath for f in files if stdlib_corpus.split_of(f.relpath) == split}
        for split in stdlib_corpus.SPLITS
    }
    assert not by_split["train"] & by_split["validation"]
    assert sorted(train + validation) == sorted(f.text for f in files)
