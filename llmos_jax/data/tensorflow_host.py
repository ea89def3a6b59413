"""Importing TensorFlow for the input pipeline: quietly, and away from the accelerators.

seqio runs on `tf.data`, so TensorFlow is loaded by every run that reads a Task.
It only feeds the host: JAX owns the accelerators. Left alone, TensorFlow's
import prints C++ start-up lines on every CPU machine (`cudart_stub.cc ... Could
not find cuda drivers`, `failed call to cuInit`, which read as errors), and on a
GPU host it would initialise CUDA and reserve device memory that JAX needs.

`import_tensorflow()` imports it once with the process's native stderr captured,
hides every GPU from TensorFlow, and writes back whatever was not a known
start-up line, so a real native error still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from types import ModuleType

# Lines TensorFlow's native libraries print at import on machines without (or
# with) CUDA; each says nothing the user must act on.
START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc|cuda_diagnostics\.cc"
    r"|cuda_dnn\.cc|cuda_blas\.cc|cuda_fft\.cc|Unable to register cu(DNN|BLAS|FFT) factory"
    r"|computation_placer\.cc|cpu_feature_guard\.cc"
    r"|To enable the following instructions:|rebuild TensorFlow with the appropriate compiler"
    r"|TF-TRT Warning|oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS"
    r"|This TensorFlow binary is optimized")


@contextlib.contextmanager
def native_stderr_filtered(noise: re.Pattern[str] = START_UP_NOISE):
    """Captures file descriptor 2 (C++ logs bypass `sys.stderr`); replays non-noise lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not noise.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported once without its start-up chatter and with no GPU visible to it."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_filtered():
        import tensorflow as tf

        # Listing devices is what initialises CUDA (and logs cuInit failures on a CPU host).
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            pass  # Something already ran TensorFlow ops; its devices are fixed.
    return tf


# The data modules whose import registers gin configurables and needs seqio
# (so TensorFlow). `llmos train` parses gin without them when it can
# (`cli.gin_config.parse_gin(defer_seqio=True)`) and imports them here, on
# first use, only if the run reads a seqio Task.
SEQIO_CONFIGURABLE_MODULES: tuple[str, ...] = (
    "llmos_jax.data.catalog",
    "llmos_jax.data.providers",
    "llmos_jax.data.text_tasks",
    "llmos_jax.data.example_batches",
    "llmos_jax.data.hf_tokenizer_vocab",
    "llmos_jax.data.few_shot",
)


def import_seqio_modules() -> None:
    """Imports TensorFlow (as `import_tensorflow`) and the seqio task modules, once.

    Safe after gin has locked its config: the modules only register
    configurables, which the parsed config did not bind (or it would have
    imported them before parsing).
    """
    if all(module in sys.modules for module in SEQIO_CONFIGURABLE_MODULES):
        return
    import gin

    import_tensorflow()
    with gin.unlock_config():
        for module in SEQIO_CONFIGURABLE_MODULES:
            importlib.import_module(module)
