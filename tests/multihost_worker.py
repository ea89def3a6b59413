"""One process of the multi-host test (run by tests/test_multihost.py, not by pytest).

Usage: multihost_worker.py PROCESS_ID NUM_PROCESSES PORT SNAPSHOT_DIR OUT_JSON
Each of the NUM_PROCESSES processes owns 4 / NUM_PROCESSES CPU devices and reads
the train split from the snapshot the test wrote (`LMBatches.snapshot_dir`), as
a host without TensorFlow does; so a worker never imports seqio or TensorFlow.

The test imports `batches` and `train_losses` and runs them in its own process,
reading the split with seqio, on 4 of its 8 devices: the single-host reference.
"""

import json
import os
import sys

TASK, BATCH_SIZE, SEQUENCE_LENGTH, STEPS = "multihost_text", 8, 16, 3


def batches(*, text_file: str | None = None, snapshot_dir: str | None = None):
    """The train split of the lines of `text_file`: with seqio, or from a snapshot of it."""
    from llmos_jax.data.lm_batches import LMBatches

    if snapshot_dir is None:
        import pathlib

        from llmos_jax.data.char_vocabulary import CharacterVocabulary
        from llmos_jax.data.registry import register_lm_task
        from llmos_jax.data.sources import FunctionSource

        # Character-level, one document per line (snapshots hold character vocabularies).
        lines = pathlib.Path(text_file).read_text(encoding="utf-8").splitlines()
        register_lm_task(TASK, FunctionSource(lambda split: lines, ("train",)),
                         CharacterVocabulary.from_texts(lines))
    return LMBatches(TASK, "train", SEQUENCE_LENGTH, BATCH_SIZE, seed=3,
                     snapshot_dir=snapshot_dir)


def train_losses(data, devices=None) -> list[float]:
    """The losses of STEPS AdamW steps on a data=2 x fsdp mesh over `devices` (default: all)."""
    import jax

    from llmos_jax.models import DecoderLM, TransformerConfig
    from llmos_jax.partitioning import (
        DEFAULT_RULES,
        Layout,
        MeshConfig,
        build_mesh,
    )
    from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
    from llmos_jax.training.train_state import init_train_state, state_shardings
    from llmos_jax.objectives.model_building import model_spec
    from llmos_jax.training.train_step import (
        StepConfig,
        jit_train_step,
        make_train_step,
    )

    assert data.host_batch_size == BATCH_SIZE // jax.process_count()
    config = TransformerConfig(vocab_size=259, num_layers=1, embed_dim=32, num_heads=4,
                               max_len=SEQUENCE_LENGTH)
    mesh = build_mesh(MeshConfig(data=2, fsdp=-1, tensor=1), devices)
    assert mesh.size == 4, mesh
    layout = Layout(mesh, DEFAULT_RULES)
    spec = model_spec(lambda rngs: DecoderLM(config, rngs=rngs, shard=layout.activation_sharder),
                      0)
    tx = make_optimizer(name="adamw", learning_rate=1e-2)
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    keys = list(data.batch_at(0))
    step = jit_train_step(make_train_step(spec, tx, current_learning_rate, StepConfig(),
                                          layout), shardings, keys, layout)
    losses = []
    for i in range(STEPS):
        state, metrics = step(state, layout.global_batch(data.batch_at(i)))
        losses.append(float(metrics["loss"]))
    return losses


def main() -> None:
    process_id, num_processes, port, snapshot_dir, out_path = sys.argv[1:6]
    process_id, num_processes = int(process_id), int(num_processes)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

    import jax

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=num_processes, process_id=process_id)
    losses = train_losses(batches(snapshot_dir=snapshot_dir))
    with open(out_path, "w") as f:
        json.dump({"losses": losses, "process_count": jax.process_count(),
                   "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                   "imported_tensorflow": "tensorflow" in sys.modules}, f)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
