"""The registry cache: a verified download replaces only a copy found damaged.

Several processes (on one host or several sharing `LLMOS_HOME`) may fetch
the same version at once; one may already be loading the copy another is
about to install over.
"""

from __future__ import annotations

import pathlib

from llmos_jax.checkpoints.manifest import check_manifest, write_manifest
from llmos_jax.registry.versions import _install


def _export(folder: pathlib.Path, weights: bytes) -> pathlib.Path:
    (folder / "params").mkdir(parents=True)
    (folder / "params" / "weights.bin").write_bytes(weights)
    write_manifest(folder)
    return folder


def test_a_whole_copy_already_there_is_kept_and_ours_left_for_discarding(tmp_path):
    target = _export(tmp_path / "cache" / "export", b"theirs")
    ours = _export(tmp_path / "partial" / "export", b"ours!!")
    _install(ours, target, "--model='models:/tiny/1'")
    assert (target / "params" / "weights.bin").read_bytes() == b"theirs"
    assert check_manifest(target) is None and ours.is_dir()


def test_a_damaged_copy_is_replaced_and_nothing_is_left_aside(tmp_path):
    target = _export(tmp_path / "cache" / "export", b"theirs")
    (target / "params" / "weights.bin").write_bytes(b"thEirs")  # same size, other bytes
    ours = _export(tmp_path / "partial" / "export", b"ours!!")
    _install(ours, target, "--model='models:/tiny/1'")
    assert (target / "params" / "weights.bin").read_bytes() == b"ours!!"
    assert check_manifest(target) is None and not ours.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["export"]


def test_a_missing_copy_is_installed(tmp_path):
    target = tmp_path / "cache" / "export"
    target.parent.mkdir()
    ours = _export(tmp_path / "partial" / "export", b"ours!!")
    _install(ours, target, "--model='models:/tiny/1'")
    assert (target / "params" / "weights.bin").read_bytes() == b"ours!!"
