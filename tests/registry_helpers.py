"""Shared pieces of the registry tests: tiny tracked runs and the CLI in-process."""

from __future__ import annotations

import pathlib

import gin

from llmos_jax.cli.main import main

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_GIN = str(REPO_ROOT / "tests" / "gin" / "tiny_train.gin")
TASK = "registry_text"
# Six steps, one eval and one checkpoint at the end: the least a registered run needs.
SHORT_STEPS = ("--gin.train.num_steps=6", "--gin.train.eval_every=6",
               "--gin.train.checkpoint_every=6", "--gin.train.log_every=2",
               "--gin.train.sample_new_tokens=4")
SHORT_RUN = (f"--gin_file={TINY_GIN}", *SHORT_STEPS, f"--gin.register_text_file_task.name={TASK!r}",
             "--gin.register_lm_task.metric_fns=[@perplexity]")


def cli(*args: str) -> int:
    """`llmos ARGS` in this process, with gin cleared before and after."""
    gin.clear_config()
    try:
        return main([str(a) for a in args])
    finally:
        gin.clear_config()


def train_args(model_dir: pathlib.Path, corpus: pathlib.Path, *extra: str) -> list[str]:
    return ["train", *SHORT_RUN, f"--model_dir={model_dir}",
            f"--gin.register_text_file_task.path={str(corpus)!r}", *extra]


def flip_byte(export_source: str) -> pathlib.Path:
    """Damages the largest file of a registered export in a file:// artifact store."""
    folder = pathlib.Path(export_source.removeprefix("file://"))
    victim = max((p for p in folder.rglob("*") if p.is_file() and p.suffix != ".json"),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return victim
