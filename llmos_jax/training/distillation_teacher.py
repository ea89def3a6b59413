"""A `Distillation` objective whose teacher is one of our exports or runs, bindable in gin::

    train.objective = @distillation()
    distillation.teacher = '/runs/teacher/export'   # or a run's model_dir (newest checkpoint)
    distillation.temperature = 2.0
    distillation.alpha = 0.5

The teacher's architecture comes from the run's `meta.json` (an export's, or
the model_dir's), its weights from `checkpoints.params_reader`. A registered
version (`models:/name/3`) works where `cli.model_uris` has turned it into a
local export folder first.
"""

from __future__ import annotations

import json
import pathlib

import gin
import jax
import numpy as np
from flax import nnx

from llmos_jax.checkpoints.params_reader import flat_params, read_our_params
from llmos_jax.errors import UserError
from llmos_jax.models.families import ArchitectureKind, get_family
from llmos_jax.objectives import CausalLm, Objective, Seq2Seq
from llmos_jax.objectives.distillation import Distillation


def load_teacher(location: str) -> nnx.Module:
    """The model of an export folder (or run model_dir) with its weights, on the host."""
    folder = pathlib.Path(location).expanduser().absolute()
    meta_file = next((path for path in (folder / "meta.json", folder / "export" / "meta.json")
                      if path.is_file()), None)
    if meta_file is None:
        raise UserError(f"distillation.teacher={location!r}: no meta.json there; pass a run's "
                        "export folder (model_dir/export) or its model_dir.")
    meta = json.loads(meta_file.read_text())
    if "model_family" not in meta or "model_config" not in meta:
        raise UserError(f"{meta_file} names no model_family/model_config; re-export the "
                        "teacher run with this llmos.")
    family = get_family(meta["model_family"])
    if family.kind is ArchitectureKind.ENCODER:
        raise UserError(f"distillation.teacher={location!r} is a {family.name} encoder; the "
                        "teacher must be a decoder or encoder-decoder LM.")
    config = family.config_class(**meta["model_config"])
    host = read_our_params(str(folder))
    abstract = nnx.eval_shape(lambda: family.build(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    expected = flat_params(nnx.to_pure_dict(state))
    missing = sorted(set(expected) - set(host))
    if missing:
        raise UserError(f"distillation.teacher={location!r} lacks parameter {missing[0]!r} of "
                        f"its recorded {family.name} config; re-export the teacher run.")
    leaves = [np.asarray(host[name]).astype(leaf.dtype) for name, leaf in expected.items()]
    params = jax.tree.unflatten(jax.tree.structure(nnx.to_pure_dict(state)), leaves)
    return nnx.merge(graphdef, params)


@gin.configurable(module="llmos_jax.training")
def distillation(teacher: str, student: Objective | None = None, temperature: float = 2.0,
                 alpha: float = 0.5) -> Distillation:
    """`Distillation` from the teacher at `teacher`; `student` defaults by the teacher's kind."""
    model = load_teacher(teacher)
    if student is None:
        student = Seq2Seq() if hasattr(model, "extend_decoder") else CausalLm()
    return Distillation(student, model, temperature=temperature, alpha=alpha)
