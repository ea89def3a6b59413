"""Test-wide setup: 8 simulated CPU devices, set before jax is imported.

Also a persistent XLA compilation cache for the session, in a fresh temporary
folder removed at the end: many tests compile the same programs (the same tiny
models' initialisation and train steps, the tiny_train.gin runs of the
end-to-end subprocesses, which inherit it), and a cached executable is the one
a fresh compile makes, so only time changes. `LLMOS_TEST_COMPILATION_CACHE=0`
turns it off; a `JAX_COMPILATION_CACHE_DIR` already set is used as it is.
"""

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


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_COMPILATION_CACHE is not None:
        shutil.rmtree(_SESSION_COMPILATION_CACHE, ignore_errors=True)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


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
