"""Damaged checkpoints and exports, without training: detection, fallback, messages, atomicity.

A run folder with checkpoints at steps 10 and 20 (host-made states, so no XLA
program is compiled) is copied, one file of step 20 is cut short, deleted or
has a byte flipped, and then:

- reading (`find_checkpoint`, what `llmos eval` / `llmos infer` use) falls
  back to step 10, warns naming the file, and leaves every byte on disk as it
  was;
- training's `restore_newest` restores step 10 bit for bit and renames step 20
  to `20.damaged-<time>` with its files unchanged, so nothing is lost and step
  20 can be saved again.

Also: an explicit damaged step or export is refused naming the file; exports
are swapped in whole (a failed one leaves the old export intact); rotation
deletes an older step only after the newer one is checksummed; and
`metrics.jsonl` records of redone steps are marked superseded.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import numpy as np
import pytest
from checkpoint_fault_helpers import (FAULTS, FILE_KINDS, assert_states_equal, damage, data_file,
                                     host_state, snapshot)

from llmos_jax.checkpoints.checkpointer import Checkpointer
from llmos_jax.checkpoints.exports import export_params, load_exported_params
from llmos_jax.checkpoints.fallback import restore_newest
from llmos_jax.checkpoints.locations import find_checkpoint
from llmos_jax.checkpoints.manifest import MANIFEST_NAME
from llmos_jax.errors import UserError
from llmos_jax.monitoring.metrics_history import mark_superseded, read_metrics

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> pathlib.Path:
    model_dir = tmp_path_factory.mktemp("faults") / "run"
    checkpointer = Checkpointer(model_dir, save_every=10, keep=3)
    for step in (10, 20):
        checkpointer.save(step, host_state(step), {"data_position": step})
    checkpointer.close()
    return model_dir


@pytest.fixture
def run_copy(saved_run, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(saved_run, tmp_path / "run"))


def test_every_step_is_saved_with_checksums_of_all_its_files(saved_run):
    for step in (10, 20):
        step_dir = saved_run / "checkpoints" / str(step)
        files = json.loads((step_dir / MANIFEST_NAME).read_text())["files"]
        on_disk = {k: v for k, v in snapshot(step_dir).items() if k != MANIFEST_NAME}
        assert {name: entry["sha256"] for name, entry in files.items()} == on_disk
        assert {"commit_success.txt", "meta/metadata", "state/_METADATA"} <= set(files)


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("fault", FAULTS)
def test_reading_falls_back_and_moves_nothing(run_copy, kind, fault, caplog):
    damaged = FILE_KINDS[kind](run_copy / "checkpoints" / "20")
    damage(damaged, fault)
    before = snapshot(run_copy)

    with caplog.at_level(logging.WARNING, logger="llmos_jax"):
        location = find_checkpoint(str(run_copy))
    assert location.step == 10 and location.meta == {"data_position": 10}
    assert location.params_item == run_copy / "checkpoints" / "10" / "state"
    assert [s.step for s in location.skipped] == [20]
    assert location.skipped[0].damage.path == damaged
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"checkpoint step 20 cannot be restored: {damaged}" in warnings[0]
    assert "Using step 10 instead; step 20 was left in place" in warnings[0]
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("fault", FAULTS)
def test_training_restores_the_previous_step_and_moves_the_damaged_one_aside(
        run_copy, kind, fault, caplog):
    step_dir = run_copy / "checkpoints" / "20"
    damaged = FILE_KINDS[kind](step_dir)
    damage(damaged, fault)
    damaged_files = snapshot(step_dir)
    checked = []

    checkpointer = Checkpointer(run_copy, save_every=10)
    with caplog.at_level(logging.WARNING, logger="llmos_jax"):
        restored = restore_newest(checkpointer, host_state(0), check_meta=checked.append,
                                  move_damaged=True)
    assert restored.step == 10 and checked == [{"data_position": 10}]
    assert_states_equal(restored.state, host_state(10))
    (moved,) = restored.skipped
    assert moved.step == 20 and moved.damage.path == damaged
    assert moved.moved_to.parent == run_copy / "checkpoints"
    assert moved.moved_to.name.startswith("20.damaged-")
    assert snapshot(moved.moved_to) == damaged_files, "the damaged step must be kept as it was"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"checkpoint step 20 cannot be restored: {damaged}: ")
    assert warning.endswith(f"Moved it aside to {moved.moved_to} (nothing was deleted); "
                            "resuming from step 10.")

    # Step 20 can be saved again, and a reader then takes it.
    checkpointer.save(20, host_state(21), {"data_position": 20})
    checkpointer.close()
    assert find_checkpoint(str(run_copy)).step == 20


def test_an_explicit_damaged_step_is_refused_naming_the_file(run_copy):
    damaged = data_file(run_copy / "checkpoints" / "20")
    damage(damaged, "flip")
    before = snapshot(run_copy)
    given = str(run_copy / "checkpoints" / "20")
    with pytest.raises(UserError) as error:
        find_checkpoint(given)
    assert str(error.value).startswith(f"--checkpoint={given!r}: checkpoint step 20 is damaged: "
                                       f"{damaged}: its SHA-256 differs")
    assert "Nothing was changed" in str(error.value)
    assert find_checkpoint(str(run_copy / "checkpoints" / "10")).step == 10
    assert snapshot(run_copy) == before


def test_none_restores_nothing_moved(run_copy):
    for step in (10, 20):
        damage(run_copy / "checkpoints" / str(step) / "meta" / "metadata", "truncate")
    before = snapshot(run_copy)
    checkpointer = Checkpointer(run_copy, save_every=10)
    with pytest.raises(UserError, match=r"none of the checkpoints in .* restores \(step 20: "
                                        r".*meta/metadata: .*step 10: .*Nothing was moved"):
        restore_newest(checkpointer, host_state(0), check_meta=lambda meta: None,
                       move_damaged=True)
    checkpointer.close()
    with pytest.raises(UserError, match="no checkpoint in .* verifies"):
        find_checkpoint(str(run_copy))
    assert snapshot(run_copy) == before


def test_a_save_interrupted_before_its_checksums_is_skipped(run_copy):
    """A step Orbax committed but whose checksums were never written is not trusted."""
    (run_copy / "checkpoints" / "20" / MANIFEST_NAME).unlink()
    location = find_checkpoint(str(run_copy))
    assert location.step == 10
    assert "interrupted after Orbax committed it" in location.skipped[0].damage.problem


def test_rotation_deletes_older_steps_only_after_the_newer_is_checksummed(tmp_path):
    seen = {}

    def on_save_stage(stage, step):
        seen[(stage, step)] = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    checkpointer = Checkpointer(tmp_path, save_every=10, keep=1, on_save_stage=on_save_stage)
    for step in (10, 20):
        checkpointer.save(step, host_state(step), {"data_position": step})
    checkpointer.close()
    assert seen[("start", 20)] == ["10"]
    assert seen[("committed", 20)] == ["10", "20"]  # No checksums yet: 10 stays.
    assert seen[("checksummed", 20)] == ["10", "20"]
    assert seen[("rotating", 20)] == ["10.deleting", "20"]  # Renamed away, then deleted.
    assert seen[("done", 20)] == ["20"]


def export(directory, step, **kwargs):
    return export_params(directory, host_state(step).params, {"step": step}, **kwargs)


def test_exports_are_checksummed_and_a_damaged_one_is_refused(tmp_path):
    path = export(tmp_path / "export", 10,
                  extra_files={"vocab/spm.model": b"vocabulary", "README.md": b"# card"})
    files = json.loads((path / MANIFEST_NAME).read_text())["files"]
    assert {"meta.json", "vocab/spm.model", "README.md"} <= set(files)
    assert any(name.startswith("params/") for name in files)
    assert find_checkpoint(str(path)).step == 10

    (path / "vocab" / "spm.model").write_bytes(b"vocabularY")
    before = snapshot(path)
    with pytest.raises(UserError) as error:
        find_checkpoint(str(path))
    assert str(error.value).startswith(
        f"--checkpoint={str(path)!r}: the export is damaged: {path / 'vocab' / 'spm.model'}: "
        "its SHA-256 differs")
    with pytest.raises(UserError, match="the export is damaged: .*spm.model"):
        load_exported_params(path)
    assert snapshot(path) == before


def test_a_failed_export_leaves_the_old_one_intact(tmp_path):
    path = export(tmp_path / "best", 10, extra_files={"README.md": b"step 10"})
    before = snapshot(path)
    # The extra file lands where the parameters' folder is: the write fails after the
    # parameters were written, as a full disk would.
    with pytest.raises(UserError, match=r"could not write the export .*best: IsADirectoryError"
                                        r".*the previous export there is unchanged"):
        export(path, 20, extra_files={"params": b"oops"})
    assert snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # No partial folder left.

    export(path, 20, extra_files={"README.md": b"step 20"})
    assert json.loads((path / "meta.json").read_text()) == {"step": 20}
    assert (path / "README.md").read_bytes() == b"step 20"
    restored = load_exported_params(path)
    np.testing.assert_array_equal(restored["embed"], host_state(20).params["embed"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_superseded_metrics_are_marked_and_readers_take_the_newest(tmp_path):
    lines = [{"step": s, "split": "train", "loss": float(s)} for s in (1, 2, 3)]
    lines.append({"step": 3, "split": "eval", "loss": 30.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert mark_superseded(tmp_path, after_step=1) == 3
    assert mark_superseded(tmp_path, after_step=1) == 0  # Already marked.
    with open(tmp_path / "metrics.jsonl", "a") as out:  # The resumed run redoes 2 and 3.
        for step in (2, 3):
            out.write(json.dumps({"step": step, "split": "train", "loss": step + 0.5}) + "\n")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6 and [r.get("superseded", False) for r in records] == [
        False, True, True, True, False, False]
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path, "train")] == [
        (1, 1.0), (2, 2.5), (3, 3.5)]
    assert read_metrics(tmp_path, "eval") == []
