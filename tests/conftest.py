"""Test-wide setup: 8 simulated CPU devices, set before jax is imported.

Also a persistent XLA compilation cache for the session, in a fresh temporary
folder removed at the end: many tests compile the same programs (the same tiny
models' initialisation and train steps, the tiny_run.gin runs of the
end-to-end subprocesses, which inherit it), and a cached executable is the one
a fresh compile makes, so only time changes. `LLMOS_TEST_COMPILATION_CACHE=0`
turns it off; a `JAX_COMPILATION_CACHE_DIR` already set is used as it is.

Files run slowest first (tests/file_durations.json, seconds per file from a
full run): with `--dist loadfile` each xdist worker takes the next file when
it is free, so starting with the longest files keeps the two workers busy to
the end instead of leaving one to finish a long end-to-end file alone.
`LLMOS_RECORD_TEST_DURATIONS=1 tools/test.sh` rewrites the file.
"""

import collections
import json
import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_SESSION_COMPILATION_CACHE = None
if ("JAX_COMPILATION_CACHE_DIR" not in os.environ
        and os.environ.get("LLMOS_TEST_COMPILATION_CACHE", "1") != "0"):
    _SESSION_COMPILATION_CACHE = tempfile.mkdtemp(prefix="llmos-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_COMPILATION_CACHE
    # Tiny test programs compile in well under JAX's default 1 s threshold.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FILE_DURATIONS = pathlib.Path(__file__).with_name("file_durations.json")
_measured_seconds: collections.Counter = collections.Counter()


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    """Slowest recorded files first; each file's tests stay together and in their order."""
    recorded = json.loads(FILE_DURATIONS.read_text()) if FILE_DURATIONS.is_file() else {}
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(_file_of(item.nodeid), index)
    items.sort(key=lambda item: (-recorded.get(_file_of(item.nodeid), 0.0),
                                 first_seen[_file_of(item.nodeid)]))


def pytest_runtest_logreport(report):
    _measured_seconds[_file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_COMPILATION_CACHE is not None:
        shutil.rmtree(_SESSION_COMPILATION_CACHE, ignore_errors=True)
    is_xdist_worker = hasattr(session.config, "workerinput")
    if os.environ.get("LLMOS_RECORD_TEST_DURATIONS") == "1" and not is_xdist_worker:
        recorded = json.loads(FILE_DURATIONS.read_text()) if FILE_DURATIONS.is_file() else {}
        recorded.update({name: round(seconds, 1) for name, seconds in _measured_seconds.items()})
        FILE_DURATIONS.write_text(json.dumps(dict(sorted(recorded.items())), indent=1) + "\n")


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """tiny_snapshot's default corpus and its split snapshot (once per test process)."""
    from tiny_snapshot import make_tiny_snapshot, write_corpus

    root = tmp_path_factory.mktemp("tiny_text")
    corpus = write_corpus(root / "corpus.txt")
    return corpus, make_tiny_snapshot(corpus, root / "snapshot")


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The shared data folder beside the checkout (`LLMOS_DATA_DIR` overrides)."""
    path = pathlib.Path(os.environ.get("LLMOS_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"the shared data folder {path} does not exist: clone the repository beside "
                    "shared/ (so ../shared/data is found) or set LLMOS_DATA_DIR", pytrace=False)
    return path


@pytest.fixture(scope="session")
def torch():
    """PyTorch, for parity with reference implementations (the `reference` extra)."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def transformers():
    """Hugging Face transformers, the reference for conversion and decoding parity."""
    return pytest.importorskip("transformers")
