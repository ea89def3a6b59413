"""Shared by the checkpoint fault tests: deterministic states, the files of a step, damage."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

import numpy as np


@dataclasses.dataclass
class HostState:
    """A stand-in for the trainer's TrainState: step, params and optimizer state."""

    step: Any
    params: Any
    opt_state: Any

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


def host_state(step: int) -> HostState:
    """Distinct random leaves for each step (float32 and int32), so equality means bit-exact."""
    rng = np.random.default_rng(step)
    return HostState(step=np.asarray(step, np.int32),
                     params={"embed": rng.normal(size=(64, 48)).astype(np.float32),
                             "bias": rng.normal(size=(48,)).astype(np.float32)},
                     opt_state={"mu": rng.normal(size=(64, 48)).astype(np.float32),
                                "count": rng.integers(0, 1000, size=(3,)).astype(np.int32)})


FAULTS = ("truncate", "delete", "flip")


def data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest array data file of the step's state (OCDBT `d/` files hold the values)."""
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(data, key=lambda p: p.stat().st_size)


# Each kind of file in a step folder: parameter data, Orbax's tree metadata, our run
# metadata (the JSON the resume choked on) and Orbax's commit marker.
FILE_KINDS = {
    "params data": data_file,
    "state metadata": lambda step_dir: step_dir / "state" / "_METADATA",
    "run metadata": lambda step_dir: step_dir / "meta" / "metadata",
    "commit marker": lambda step_dir: step_dir / "commit_success.txt",
}


def damage(path: pathlib.Path, fault: str) -> None:
    data = path.read_bytes()
    if fault == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "delete":
        path.unlink()
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])


def snapshot(directory: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _leaves(tree, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {name: leaf for key, value in tree.items()
                for name, leaf in _leaves(value, f"{prefix}{key}/").items()}
    return {prefix: tree}


def assert_states_equal(restored, expected) -> None:
    """Same leaves, dtypes and values, bit for bit."""
    got, want = _leaves(restored.as_dict()), _leaves(expected.as_dict())
    assert got.keys() == want.keys()
    for name in want:
        assert np.asarray(got[name]).dtype == want[name].dtype, name
        np.testing.assert_array_equal(np.asarray(got[name]), want[name], err_msg=name)
