"""Tables that map Hugging Face tensor names onto our parameter paths, both ways.

A family module (e.g. ``gpt2``) describes its checkpoint as a list of
:class:`TensorRule` s: a group of HF tensors, the group of our parameters they
become, and the two numpy functions that convert between them (split a fused
QKV matrix, reshape heads, transpose). The :class:`MappingTable` here does the
rest once for every family:

- expands per-layer rules (``{layer}`` in the HF name) over the blocks;
- places per-layer parameters either stacked on a leading layer axis (our
  ``scan_layers=True``: ``layers/attn/query/kernel`` is ``[layers, ...]``) or
  one block each (``layers/0/attn/query/kernel``);
- checks the checkpoint before converting anything, and raises one
  ``UserError`` naming the first offending tensor(s): a missing tensor, an
  unexpected one, or a shape that the config does not predict.

Our parameters are addressed by paths as ``flax.nnx`` flattens them: tuples of
attribute names and, for unstacked blocks, the integer block index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from llmos_jax.errors import UserError

LAYER = "{layer}"
"""Placeholder for the block index in a per-layer rule's HF tensor names."""

ParamPath = tuple[str | int, ...]
Shape = tuple[int, ...]
_LISTED = 3  # names quoted in one error message before "and N more"


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """Some HF tensors and the parameters of ours they are converted to.

    Attributes:
      hf_keys: HF tensor names; a rule whose names contain ``{layer}`` is
        applied once per block.
      hf_shapes: The shape each HF tensor must have (from the config).
      our_paths: Our parameter paths; relative to a block for a per-layer rule.
      to_ours: ``to_ours(*hf_arrays)`` returns our arrays, in ``our_paths`` order.
      to_hf: ``to_hf(*our_arrays)`` returns HF arrays, in ``hf_keys`` order.
      stack: For a per-layer rule of a model with several block stacks (an
        encoder-decoder): ``(our attribute holding the blocks, block count)``.
        None uses the table's ``layers_key`` and ``num_layers``.
    """

    hf_keys: tuple[str, ...]
    hf_shapes: tuple[Shape, ...]
    our_paths: tuple[ParamPath, ...]
    to_ours: Callable[..., Sequence[np.ndarray]]
    to_hf: Callable[..., Sequence[np.ndarray]]
    stack: tuple[str | ParamPath, int] | None = None

    def __post_init__(self) -> None:
        if len(self.hf_keys) != len(self.hf_shapes):
            raise ValueError(f"TensorRule {self.hf_keys}: one shape per HF key is needed")
        per_layer = {LAYER in key for key in self.hf_keys}
        if len(per_layer) != 1:
            raise ValueError(f"TensorRule {self.hf_keys}: mixes per-layer and global tensors")

    @property
    def per_layer(self) -> bool:
        return LAYER in self.hf_keys[0]


def renamed(hf_key: str, hf_shape: Shape, our_path: ParamPath) -> TensorRule:
    """A rule for a tensor that is the same array on both sides."""
    return TensorRule((hf_key,), (tuple(hf_shape),), (our_path,),
                      to_ours=lambda array: (array,), to_hf=lambda array: (array,))


def transposed(hf_key: str, hf_shape: Shape, our_path: ParamPath) -> TensorRule:
    """A rule for a 2-D tensor stored transposed on one side (PyTorch Linear vs our kernels)."""
    return TensorRule((hf_key,), (tuple(hf_shape),), (our_path,),
                      to_ours=lambda array: (array.T,), to_hf=lambda array: (array.T,))


def linear_to_heads(hf_key: str, embed: int, heads: int, head_dim: int,
                    our_path: ParamPath) -> TensorRule:
    """A PyTorch ``Linear(embed, heads * head_dim)`` weight <-> our [embed, heads, head_dim] kernel."""
    return TensorRule((hf_key,), ((heads * head_dim, embed),), (our_path,),
                      to_ours=lambda w: (w.T.reshape(embed, heads, head_dim),),
                      to_hf=lambda k: (k.reshape(embed, heads * head_dim).T,))


def heads_to_linear(hf_key: str, embed: int, heads: int, head_dim: int,
                    our_path: ParamPath) -> TensorRule:
    """A PyTorch ``Linear(heads * head_dim, embed)`` weight <-> our [heads, head_dim, embed] kernel."""
    return TensorRule((hf_key,), ((embed, heads * head_dim),), (our_path,),
                      to_ours=lambda w: (w.T.reshape(heads, head_dim, embed),),
                      to_hf=lambda k: (k.reshape(heads * head_dim, embed).T,))


def bias_to_heads(hf_key: str, heads: int, head_dim: int, our_path: ParamPath) -> TensorRule:
    """A [heads * head_dim] bias <-> our [heads, head_dim] bias."""
    return TensorRule((hf_key,), ((heads * head_dim,),), (our_path,),
                      to_ours=lambda b: (b.reshape(heads, head_dim),),
                      to_hf=lambda b: (b.reshape(heads * head_dim),))


@dataclasses.dataclass(frozen=True)
class MappingTable:
    """A family's full checkpoint layout, and conversion in both directions.

    Attributes:
      family: Human name for messages, e.g. "GPT-2".
      rules: Every tensor of the checkpoint.
      num_layers: Blocks to expand per-layer rules over.
      stacked_layers: Our block parameters are stacked on a leading axis
        (``scan_layers=True``) rather than one block per index.
      config_summary: The config values that fix the shapes (e.g.
        "n_layer=2, n_embd=64"), quoted when a shape or name does not match.
      ignored_hf_key: Names of HF tensors that carry no weights (buffers such
        as cached causal masks); skipped on import.
      layers_key: Our attribute that holds the blocks (a path for nested
        models, e.g. ``("encoder", "layers")``).
    """

    family: str
    rules: tuple[TensorRule, ...]
    num_layers: int
    stacked_layers: bool
    config_summary: str
    ignored_hf_key: Callable[[str], bool] = lambda key: False
    layers_key: str | ParamPath = "layers"

    def hf_tensors_to_params(self, tensors: Mapping[str, np.ndarray],
                             our_specs: Mapping[ParamPath, tuple[Shape, np.dtype]],
                             source: str) -> dict[ParamPath, np.ndarray]:
        """Converts a checkpoint's tensors into our parameters.

        Args:
          tensors: HF name to array.
          our_specs: Every parameter of the target model: path to (shape,
            dtype). Results are cast to these dtypes.
          source: The checkpoint's file, quoted in error messages.

        Returns:
          Our path to array, covering exactly ``our_specs``.
        """
        self.check_hf_shapes({key: tuple(array.shape) for key, array in tensors.items()}, source)
        per_block: dict[ParamPath, list[np.ndarray]] = {}
        params: dict[ParamPath, np.ndarray] = {}
        for rule, layer, keys in self._expanded_rules():
            arrays = rule.to_ours(*(tensors[key] for key in keys))
            for relative, array in zip(rule.our_paths, arrays, strict=True):
                if layer is None:
                    params[relative] = array
                elif self.stacked_layers:
                    per_block.setdefault(self.block_stack(rule)[0] + relative, []).append(array)
                else:
                    params[self.block_stack(rule)[0] + (layer,) + relative] = array
        for path, blocks in per_block.items():
            params[path] = np.stack(blocks)
        self._check_our_paths(set(our_specs), set(params), model_side="the model built from it")
        converted = {}
        for path, (shape, dtype) in our_specs.items():
            array = params[path]
            if tuple(array.shape) != tuple(shape):
                raise UserError(
                    f"parameter {_format_path(path)} of the model has shape {tuple(shape)}, but "
                    f"{self.family} config ({self.config_summary}) gives {tuple(array.shape)}; "
                    "do not override shape fields (embed_dim, num_heads, head_dim, mlp_dim, ...) "
                    "when importing."
                )
            converted[path] = np.asarray(array, dtype=dtype)
        return converted

    def check_hf_shapes(self, shapes: Mapping[str, Shape], source: str) -> None:
        """Raises a ``UserError`` for a missing, unexpected or wrong-shape checkpoint tensor.

        Args:
          shapes: Every tensor of the checkpoint: HF name to shape (a loader
            that streams reads these from the file headers alone).
          source: The checkpoint's file, quoted in error messages.
        """
        expected = dict(self._expected_hf_shapes())
        self._check_hf_names(expected, shapes, source)
        for key, shape in expected.items():
            found = tuple(shapes[key])
            if found != shape:
                raise UserError(
                    f"{self.family} tensor {key!r} in {source} has shape {found}, but the "
                    f"config ({self.config_summary}) expects {shape}; the weights and "
                    "config.json come from different models."
                )

    def placements(self) -> Iterator[tuple[tuple[str, ...], TensorRule,
                                           tuple[tuple[ParamPath, int | None], ...]]]:
        """Each conversion step: (HF names, rule, where each output goes).

        An output goes to ``(our path, layer)``: ``layer`` is the index on the
        parameter's leading (stacked) axis, or None when the output is the
        whole parameter. A streaming loader converts one step at a time.
        """
        for rule, layer, keys in self._expanded_rules():
            targets = []
            for relative in rule.our_paths:
                if layer is None:
                    targets.append((relative, None))
                elif self.stacked_layers:
                    targets.append((self.block_stack(rule)[0] + relative, layer))
                else:
                    targets.append((self.block_stack(rule)[0] + (layer,) + relative, None))
            yield keys, rule, tuple(targets)

    def check_model_paths(self, model_paths: set[ParamPath]) -> None:
        """Raises a ``UserError`` unless the table fills exactly `model_paths`."""
        self._check_our_paths(model_paths, set(self._our_paths()),
                              model_side="the model built from it")

    def params_to_hf_tensors(self, params: Mapping[ParamPath, np.ndarray]) -> dict[str, np.ndarray]:
        """Converts our parameters (path to array) into HF tensors (name to array)."""
        expected_paths = set(self._our_paths())
        self._check_our_paths(set(params), expected_paths, model_side="the model")
        tensors: dict[str, np.ndarray] = {}
        for rule, layer, keys in self._expanded_rules():
            ours = [self._our_array(params, self.block_stack(rule)[0], relative, layer)
                    for relative in rule.our_paths]
            arrays = rule.to_hf(*ours)
            for key, shape, array in zip(keys, rule.hf_shapes, arrays, strict=True):
                if tuple(array.shape) != shape:
                    raise UserError(
                        f"the model's parameters give {self.family} tensor {key!r} shape "
                        f"{tuple(array.shape)}, but its config ({self.config_summary}) expects "
                        f"{shape}; the parameters do not match model.config."
                    )
                tensors[key] = np.ascontiguousarray(array)
        return tensors

    def _expanded_rules(self) -> Iterator[tuple[TensorRule, int | None, tuple[str, ...]]]:
        for rule in self.rules:
            if not rule.per_layer:
                yield rule, None, rule.hf_keys
                continue
            for layer in range(self.block_stack(rule)[1]):
                yield rule, layer, tuple(key.replace(LAYER, str(layer)) for key in rule.hf_keys)

    def _expected_hf_shapes(self) -> Iterator[tuple[str, Shape]]:
        for rule, _, keys in self._expanded_rules():
            yield from zip(keys, rule.hf_shapes)

    def _our_paths(self) -> Iterator[ParamPath]:
        for rule in self.rules:
            layers_key, num_layers = self.block_stack(rule)
            if not rule.per_layer:
                yield from rule.our_paths
            elif self.stacked_layers:
                yield from (layers_key + relative for relative in rule.our_paths)
            else:
                for layer in range(num_layers):
                    yield from (layers_key + (layer,) + relative for relative in rule.our_paths)

    def block_stack(self, rule: TensorRule) -> tuple[ParamPath, int]:
        """(path of the rule's blocks, how many blocks); a str key is a one-part path."""
        key, count = rule.stack or (self.layers_key, self.num_layers)
        return (key,) if isinstance(key, str) else tuple(key), count

    def _our_array(self, params: Mapping[ParamPath, np.ndarray], layers_key: ParamPath,
                   relative: ParamPath, layer: int | None) -> np.ndarray:
        if layer is None:
            return params[relative]
        if self.stacked_layers:
            return params[layers_key + relative][layer]
        return params[layers_key + (layer,) + relative]

    def _check_hf_names(self, expected: Mapping[str, Shape], found: Mapping[str, Shape],
                        source: str) -> None:
        missing = [key for key in expected if key not in found]
        if missing:
            listed = ", ".join(f"{key!r} (shape {expected[key]})" for key in missing[:_LISTED])
            raise UserError(
                f"{self.family} checkpoint {source} is missing tensor {listed}{_more(missing)}; "
                f"config.json ({self.config_summary}) predicts them: check that config.json "
                "and the weights belong to the same model."
            )
        unexpected = [key for key in found if key not in expected and not self.ignored_hf_key(key)]
        if unexpected:
            listed = ", ".join(f"{key!r} (shape {tuple(found[key])})"
                               for key in unexpected[:_LISTED])
            raise UserError(
                f"{self.family} checkpoint {source} has unexpected tensor {listed}{_more(unexpected)}, "
                f"which no {self.family} parameter maps to under config.json "
                f"({self.config_summary}); check config.json's model_type and layer count."
            )

    def _check_our_paths(self, model_paths: set[ParamPath], table_paths: set[ParamPath],
                         model_side: str) -> None:
        unmapped = sorted(_format_path(path) for path in model_paths - table_paths)
        if unmapped:
            raise UserError(
                f"parameter {', '.join(unmapped[:_LISTED])}{_more(unmapped)} of {model_side} has no "
                f"{self.family} counterpart; convert a model built with the family's own config "
                "(opt-in layouts such as fused projections are not mapped)."
            )
        absent = sorted(_format_path(path) for path in table_paths - model_paths)
        if absent:
            raise UserError(
                f"{self.family} conversion needs parameter {', '.join(absent[:_LISTED])}"
                f"{_more(absent)}, which {model_side} lacks; its config does not match "
                f"{self.family} ({self.config_summary})."
            )


def flatten_params(nested: Mapping) -> dict[ParamPath, object]:
    """Flattens a nested pure dict (as ``nnx.to_pure_dict`` gives) into path -> leaf."""
    flat: dict[ParamPath, object] = {}

    def walk(prefix: ParamPath, node: object) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(prefix + (key,), child)
        else:
            flat[prefix] = node

    walk((), nested)
    return flat


def unflatten_params(flat: Mapping[ParamPath, object]) -> dict:
    """The inverse of :func:`flatten_params`."""
    nested: dict = {}
    for path, leaf in flat.items():
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return nested


def _format_path(path: ParamPath) -> str:
    return "/".join(str(part) for part in path)


def _more(items: Sequence) -> str:
    return f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
