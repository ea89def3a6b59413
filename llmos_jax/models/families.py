"""The model-family registry: what makes a model a decoder, an encoder or an encoder-decoder.

Each family is declared once, here, as a `ModelFamily`: its config class, its
model class (and, for encoders, the task heads built on it), its
`ArchitectureKind` and its training-FLOPs formula. Everything above the
models reads the registry instead of keeping its own `isinstance` table:

- objectives (`llmos_jax.objectives`) find the family of
  `train.model_config` with `family_for_config`, check that it has the kind
  the objective trains, and build `family.build(config, ...)` (or one of its
  `heads`);
- decoding (`llmos_jax.inference.decoding_model`) and scoring dispatch on
  `family_of(model).kind`: one adapter per *kind*, so a new decoder-only
  family decodes with no edit there;
- evaluation reaches a model only through decoding, scoring and the
  objective, so it needs nothing per family;
- the trainer's MFU numerator is `family.training_flops_per_token`;
- Hugging Face converters (`llmos_jax.convert.hf_models`) name the family
  they import into, in that layer's one table keyed by ``model_type``.

Why per-kind and per-name tables above, rather than hooks stored on the
family: a family is a frozen fact about the models layer, and the layers
above must not be imported from here (`docs/architecture.md`). Decoding
needs only the kind (how to prefill and step), which the family states; a
converter is a per-checkpoint-format fact that belongs to `convert`. So each
upper layer keeps exactly one table, keyed by what the family declares.

Lookups are MRO-aware: a config subclass belongs to the family of its
nearest registered ancestor, unless it registers a family of its own.
A test or plug-in adds a family with `register` and removes it with
`unregister`.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.decoder import DecoderLM
from llmos_jax.models.encoder import Encoder, EncoderConfig
from llmos_jax.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM
from llmos_jax.models.flops import decoder_config_training_flops_per_token
from llmos_jax.models.heads import (EncoderForPreTraining, EncoderForSequenceClassification,
                                    EncoderForTokenClassification)

FlopsFormula = Callable[[Any, int], float]

# Task heads an encoder family offers (`ModelFamily.heads` keys).
PRETRAINING = "pretraining"
SEQUENCE_CLASSIFICATION = "sequence_classification"
TOKEN_CLASSIFICATION = "token_classification"


class ArchitectureKind(enum.Enum):
    """What upper layers dispatch on: how a model is fed, trained and decoded.

    DECODER: causal LM over one token stream; `__call__(tokens, positions=,
      segment_ids=, dropout_key=)` gives logits, `extend`/`logits` decode over
      a KV cache.
    ENCODER: bidirectional; classifies or fills masks through task heads,
      never generates.
    ENCODER_DECODER: encoder input plus a causal decoder with
      cross-attention (T5): `__call__(encoder_tokens, decoder_tokens, ...)`,
      `encode`/`cross_keys_values`/`extend_decoder` decode.
    """

    DECODER = "decoder"
    ENCODER = "encoder"
    ENCODER_DECODER = "encoder_decoder"


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One family's facts, declared once.

    Attributes:
      name: Registry key, used in messages and by upper layers' tables
        (e.g. the converter table names the family it imports into).
      kind: The architecture kind (see `ArchitectureKind`).
      config_class: The config that selects this family; subclasses of it do
        too unless they register their own family.
      model_class: The family's model, built as
        `model_class(config, rngs=..., shard=...)`: the LM for decoders and
        encoder-decoders, the bare backbone for encoders.
      heads: Task models on the backbone by task name (`PRETRAINING`,
        `SEQUENCE_CLASSIFICATION`, `TOKEN_CLASSIFICATION`), for encoder
        objectives.
      training_flops_per_token: `(config, seq_len) -> float`, training
        (forward + backward) model FLOPs per token, the MFU numerator; None
        where no count is agreed yet, and runs log tokens/s without MFU.
    """

    name: str
    kind: ArchitectureKind
    config_class: type
    model_class: type[nnx.Module]
    heads: Mapping[str, type[nnx.Module]] = dataclasses.field(default_factory=dict, hash=False)
    training_flops_per_token: FlopsFormula | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise UserError("ModelFamily.name must not be empty.")
        if not isinstance(self.kind, ArchitectureKind):
            raise UserError(f"ModelFamily {self.name!r}: kind={self.kind!r} is not an "
                            f"ArchitectureKind ({', '.join(k.name for k in ArchitectureKind)}).")
        for field in ("config_class", "model_class"):
            if not isinstance(getattr(self, field), type):
                raise UserError(f"ModelFamily {self.name!r}: {field} must be a class, got "
                                f"{getattr(self, field)!r}.")
        object.__setattr__(self, "heads", types.MappingProxyType(dict(self.heads)))

    def build(self, config: Any, *, rngs: nnx.Rngs,
              shard: axes.ActivationSharder = axes.no_sharding) -> nnx.Module:
        """The family's model for `config`."""
        return self.model_class(config, rngs=rngs, shard=shard)

    def head(self, task: str, *, caller: str) -> type[nnx.Module]:
        """The task model class for `task`; `caller` (an objective) is named in the error."""
        if task not in self.heads:
            offered = ", ".join(sorted(self.heads)) or "none"
            raise UserError(f"{caller} needs a {task} head, which model family {self.name!r} "
                            f"does not offer (it has: {offered}); choose a model config of a "
                            "family that has one.")
        return self.heads[task]

    def flops_per_token(self, config: Any, seq_len: int) -> float | None:
        """Training FLOPs per token of `config` at `seq_len`, or None without a formula."""
        if self.training_flops_per_token is None:
            return None
        return float(self.training_flops_per_token(config, seq_len))

    def model_classes(self) -> tuple[type, ...]:
        """The model class and every head: the classes whose instances belong here."""
        return (self.model_class, *self.heads.values())


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Adds `family`; its name and config class must be new (one family per config class).

    Returns the family, so a module can declare and register in one line.
    """
    if family.name in _FAMILIES:
        raise UserError(f"model family {family.name!r} is already registered; unregister it "
                        "first or choose another name.")
    for other in _FAMILIES.values():
        if other.config_class is family.config_class:
            raise UserError(f"model family {family.name!r}: config class "
                            f"{family.config_class.__name__} already selects family "
                            f"{other.name!r}; give the new family its own config class "
                            "(a subclass is enough).")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Removes the family `name` (a no-op when absent), e.g. after a test."""
    _FAMILIES.pop(name, None)


def families() -> tuple[ModelFamily, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`."""
    if name not in _FAMILIES:
        raise UserError(f"no model family {name!r}; registered: {_names()}.")
    return _FAMILIES[name]


def families_of_kind(kind: ArchitectureKind) -> tuple[ModelFamily, ...]:
    """The registered families of `kind`, in registration order."""
    return tuple(f for f in _FAMILIES.values() if f.kind is kind)


def family_for_config(config: Any) -> ModelFamily:
    """The family a model config (or config class) selects: its nearest registered ancestor.

    Raises:
      UserError: no registered family's config class is in the config's MRO.
    """
    config_type = config if isinstance(config, type) else type(config)
    by_class = {f.config_class: f for f in _FAMILIES.values()}
    for cls in config_type.__mro__:
        if cls in by_class:
            return by_class[cls]
    raise UserError(f"model config {config_type.__name__} belongs to no registered model "
                    f"family (registered: {_names()}); use one of their config classes "
                    "(train.model_config in gin/models/) or register a ModelFamily for it "
                    "(llmos_jax.models.families.register).")


def family_of(model: nnx.Module) -> ModelFamily:
    """The family of a built model: by its class (model or head), else by its `config`.

    Raises:
      UserError: neither the class nor the config belongs to a registered family.
    """
    by_class = {cls: f for f in _FAMILIES.values() for cls in f.model_classes()}
    for cls in type(model).__mro__:
        if cls in by_class:
            return by_class[cls]
    config = getattr(model, "config", None)
    if config is None:
        raise UserError(f"model {type(model).__name__} belongs to no registered model family "
                        f"(registered: {_names()}) and has no `config` to look one up by.")
    return family_for_config(config)


def _names() -> str:
    return ", ".join(f"{f.name} ({f.config_class.__name__})" for f in _FAMILIES.values()) or "none"


DECODER = register(ModelFamily(
    name="decoder", kind=ArchitectureKind.DECODER, config_class=TransformerConfig,
    model_class=DecoderLM, training_flops_per_token=decoder_config_training_flops_per_token))
BERT = register(ModelFamily(
    name="bert", kind=ArchitectureKind.ENCODER, config_class=EncoderConfig, model_class=Encoder,
    heads={PRETRAINING: EncoderForPreTraining,
           SEQUENCE_CLASSIFICATION: EncoderForSequenceClassification,
           TOKEN_CLASSIFICATION: EncoderForTokenClassification}))
T5 = register(ModelFamily(
    name="t5", kind=ArchitectureKind.ENCODER_DECODER, config_class=EncoderDecoderConfig,
    model_class=EncoderDecoderLM))
