"""The training state, and where each of its arrays lives on the mesh.

Parameters are kept as a plain nested dict (NNX "pure dict") next to the
model's graph definition, so optax, Orbax and jit see ordinary pytrees. Their
shardings come from the run's `Layout`: the logical axes each parameter was
created with, laid on the mesh by the rules; optimizer-state shardings follow
the parameter each moment belongs to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from llmos_jax.objectives.model_building import ModelSpec, Params
from llmos_jax.partitioning import Layout


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """What a training step reads and writes; everything in it is checkpointed."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


def state_shardings(spec: ModelSpec, tx: optax.GradientTransformation,
                    layout: Layout) -> TrainState:
    """Shardings for every array of the TrainState, as `layout` places them."""
    params = layout.param_shardings(spec)
    opt_state = layout.opt_state_shardings(tx, spec.abstract_params, params)
    return TrainState(step=layout.replicated, params=params, opt_state=opt_state)


def abstract_train_state(spec: ModelSpec, tx: optax.GradientTransformation,
                         shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target for a checkpoint."""
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=spec.abstract_params,
                        opt_state=jax.eval_shape(tx.init, spec.abstract_params))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


# XLA:CPU compiles the initialiser (threefry and normal draws for every
# parameter, plus the optimizer's zeros) at LLVM's -O2 by default: 4.2 s of
# a first run's start-up for a 0.8M-parameter GPT on a 2-core EPYC, longer
# than the train step's compile. It runs once, so -O1 is enough: 1.5 s to
# compile, the same run time, and bit-identical parameters (integer hashing
# and elementwise float math with no reductions to reorder); the test
# tests/test_training_init_compile.py holds that for the model families.
# (-O0 changes the draws, and ran 124M parameters' worth of normal draws 4.6x slower.)
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_compiler_options() -> dict[str, object] | None:
    """XLA options for compiling the initialiser on this backend (None: the defaults)."""
    return dict(CPU_INIT_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


def init_train_state(spec: ModelSpec, tx: optax.GradientTransformation,
                     shardings: TrainState) -> TrainState:
    """Initialises parameters and optimizer state directly in their shards."""

    def init() -> TrainState:
        params = spec.init_params()
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    lowered = jax.jit(init, out_shardings=shardings).lower()
    return lowered.compile(compiler_options=init_compiler_options())()
