"""Test-wide setup: 8 simulated CPU devices, set before jax is imported."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

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
