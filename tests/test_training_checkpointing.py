"""Checkpoints: cross-mesh restore, named shape mismatches, rotation, metadata, exports."""

import functools
import hashlib
import json
import pathlib

import jax
import numpy as np
import pytest

from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.partitioning import DEFAULT_RULES, Layout, MeshConfig, build_mesh
from llmos_jax.checkpoints.checkpointer import (Checkpointer, check_writable, export_params,
                                              load_exported_params, numpy_tree)
from llmos_jax.training.optimizers import make_optimizer
from llmos_jax.training.train_state import abstract_train_state, state_shardings
from llmos_jax.objectives.model_building import model_spec


def config(embed_dim=32, scan_layers=True):
    return TransformerConfig(vocab_size=64, num_layers=2, embed_dim=embed_dim, num_heads=4,
                             max_len=16, scan_layers=scan_layers)


def mesh_for(shape):
    return build_mesh(MeshConfig(*shape), jax.devices()[:1] if shape == (1, 1, 1) else None)


def setup(shape, embed_dim=32, scan_layers=True):
    mesh = mesh_for(shape)
    cfg = config(embed_dim, scan_layers)
    spec = model_spec(lambda rngs: DecoderLM(cfg, rngs=rngs), 0)
    tx = make_optimizer()
    return mesh, spec, tx, state_shardings(spec, tx, Layout(mesh, DEFAULT_RULES))


@functools.cache
def host_state(scan_layers=True):
    """A TrainState whose every leaf (params, Adam moments, counters) is distinct random data.

    Filled on the host instead of initialised, so equality checks cannot pass
    by comparing zeros with zeros, and no XLA program has to be compiled.
    """
    _, spec, tx, shardings = setup((1, 1, 1), scan_layers=scan_layers)
    abstract = abstract_train_state(spec, tx, shardings)
    rng = np.random.default_rng(0)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.integer):
            return rng.integers(1, 1000, leaf.shape).astype(leaf.dtype)
        return rng.normal(size=leaf.shape).astype(leaf.dtype)

    return jax.tree.map(fill, abstract)


def sharded_state(shape, scan_layers=True):
    *_, shardings = setup(shape, scan_layers=scan_layers)
    return jax.device_put(host_state(scan_layers), shardings)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, numpy_tree(a), numpy_tree(b))


def snapshot(directory: pathlib.Path) -> dict:
    """Every file under `directory` with its size and content hash."""
    return {str(p.relative_to(directory)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def save(model_dir, steps, state, keep=3, meta=None):
    checkpointer = Checkpointer(model_dir, save_every=1, keep=keep, async_save=True)
    for step in steps:
        checkpointer.save(step, state, meta if meta is not None else {"data_position": step})
    checkpointer.wait()
    return checkpointer


@pytest.mark.parametrize("scan_layers", [True, False])
def test_restore_onto_other_meshes(tmp_path, scan_layers):
    """Saved on (2,2,2), restored onto (1,8,1) and one device by a fresh Checkpointer (a resumed
    process): equal values, new shardings."""
    state = sharded_state((2, 2, 2), scan_layers)
    save(tmp_path, [5], state).close()
    checkpointer = Checkpointer(tmp_path, save_every=1)
    assert checkpointer.latest_step() == 5
    for shape in [(1, 8, 1), (1, 1, 1)]:
        _, spec, tx, shardings = setup(shape, scan_layers=scan_layers)
        restored = checkpointer.restore(5, abstract_train_state(spec, tx, shardings))
        assert_trees_equal(restored, state)
        assert jax.tree.all(jax.tree.map(lambda x, s: x.sharding == s, restored, shardings))
    assert restored.params["token_embed"]["embedding"].sharding.mesh.size == 1
    checkpointer.close()


def test_mismatched_model_is_named_and_checkpoint_untouched(tmp_path):
    """A restore into a wider model names the first mismatching parameter and changes no file."""
    state = sharded_state((2, 2, 2))
    save(tmp_path, [3], state).close()
    before = snapshot(tmp_path)
    checkpointer = Checkpointer(tmp_path, save_every=1)  # as a resumed run would
    assert before

    _, spec, tx, shardings = setup((1, 8, 1), embed_dim=48)
    with pytest.raises(UserError) as err:
        checkpointer.restore(3, abstract_train_state(spec, tx, shardings))
    # 'final_norm/bias' is the first differing path in sorted order.
    assert "parameter 'final_norm/bias' has shape (32,) in the checkpoint but (48,)" in str(err.value)
    assert "step 3" in str(err.value)
    assert snapshot(tmp_path) == before

    _, spec, tx, shardings = setup((1, 8, 1))
    assert_trees_equal(checkpointer.restore(3, abstract_train_state(spec, tx, shardings)), state)
    checkpointer.close()


def test_keep_rotates_old_checkpoints(tmp_path):
    """keep=2 leaves only the last two steps, on disk as well as in the listing."""
    checkpointer = save(tmp_path, [1, 2, 3, 4], sharded_state((1, 1, 1)), keep=2)
    assert checkpointer.all_steps() == [3, 4]
    assert checkpointer.latest_step() == 4
    on_disk = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert on_disk == ["3", "4"]
    checkpointer.close()


def test_meta_json_round_trip(tmp_path):
    """The meta item comes back exactly as saved, per step."""
    meta = {"data_position": 1234, "config": {"embed_dim": 32, "dropout_rate": 0.1,
                                              "norm": "layernorm", "head_dim": None,
                                              "tie_embeddings": True, "sizes": [1, 2, 3]},
            "vocabulary": "byte"}
    state = sharded_state((1, 1, 1))
    checkpointer = save(tmp_path, [7], state, meta=meta)
    checkpointer.save(8, state, {"data_position": 99})
    checkpointer.wait()
    assert checkpointer.read_meta(7) == meta
    assert checkpointer.read_meta(8) == {"data_position": 99}
    checkpointer.close()
    # A new Checkpointer on the same directory (a resumed run) reads it too.
    reopened = Checkpointer(tmp_path, save_every=1)
    assert reopened.latest_step() == 8
    assert reopened.read_meta(7) == meta
    reopened.close()


def test_check_writable(tmp_path):
    """A creatable directory is created; one under a regular file raises UserError naming it."""
    fresh = tmp_path / "a" / "b"
    assert check_writable(fresh) == fresh
    assert fresh.is_dir() and list(fresh.iterdir()) == []

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    bad = blocker / "run"
    with pytest.raises(UserError, match="not writable") as err:
        check_writable(bad)
    assert str(bad) in str(err.value)
    assert blocker.read_text() == "not a directory"


def test_export_and_load_params(tmp_path):
    """Exported params load back equal, with metadata, onto the same or another mesh."""
    state = sharded_state((2, 2, 2))
    meta = {"config": {"embed_dim": 32}, "step": 10}
    path = export_params(tmp_path / "export", state.params, meta)
    assert (path / "meta.json").is_file()
    assert json.loads((path / "meta.json").read_text()) == meta

    loaded = load_exported_params(path)
    assert_trees_equal(loaded, state.params)

    mesh, spec, _, _ = setup((1, 8, 1))
    shardings = Layout(mesh, DEFAULT_RULES).param_shardings(spec)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          spec.abstract_params, shardings)
    resharded = load_exported_params(path, target)
    assert_trees_equal(resharded, state.params)
    assert jax.tree.all(jax.tree.map(lambda x, s: x.sharding == s, resharded, shardings))

    with pytest.raises(UserError, match="no exported params"):
        load_exported_params(tmp_path / "missing")
