"""Registering seqio Tasks and Mixtures by name, and looking them up with clear errors.

Two recipes cover the project's tasks:

- :func:`register_lm_task`: one text feature becomes ``targets`` (causal or
  prefix-free LM). Each document gets EOS, then is cut into window-sized
  chunks (``chunk_tokens``) so nothing is trimmed away.
- :func:`register_text_to_text_task`: two text features become ``inputs``
  and ``targets`` (translation, summarisation), for the prefix-LM and
  encoder-decoder feature converters. Over-long examples are trimmed by
  the converter, and ``LMBatches`` reports how much.

Both put ``seqio.CacheDatasetPlaceholder`` after tokenization, so
``tools/cache_task.py`` can cache tokenized examples offline and training
can read them back with ``LMBatches.use_cached``; window-dependent steps
(chunking) run after the cache. Registering a name again replaces the
earlier definition, so re-running a config in one process works.

:func:`get_provider` is the one lookup: an unknown name first tries the
built-in catalog (``llmos_jax.data.catalog``), then fails with close matches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import gin
import seqio

from llmos_jax import metrics as _metrics  # noqa: F401 (gin: @llmos_jax.evaluation.bleu)
from llmos_jax.data.preprocessors import chunk_tokens
from llmos_jax.errors import UserError


# Lets gin files name seqio's vocabularies: `@seqio.ByteVocabulary()`.
gin.external_configurable(seqio.ByteVocabulary, module="seqio")
gin.external_configurable(seqio.SentencePieceVocabulary, module="seqio")


def _tokenize_then_cache_point() -> list:
    return [
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
        seqio.preprocessors.append_eos,
        seqio.CacheDatasetPlaceholder(),
    ]


MetricFn = Callable[..., Mapping[str, float]]
PostprocessFn = Callable[..., object]


def _add_task(name: str, source: seqio.DataSource, preprocessors: list,
              output_features: dict[str, seqio.Feature], *,
              metric_fns: Sequence[MetricFn] = (),
              postprocess_fn: PostprocessFn | None = None) -> str:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                           output_features=output_features, metric_fns=list(metric_fns),
                           postprocess_fn=postprocess_fn)
    return name


@gin.configurable
def register_lm_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary, *,
                     text_feature: str = "text", chunk: bool = True,
                     metric_fns: Sequence[MetricFn] = (),
                     postprocess_fn: PostprocessFn | None = None) -> str:
    """Registers a language-modelling Task: ``source[text_feature]`` -> ``targets``.

    Args:
      name: the Task name.
      source: yields examples with a ``text_feature`` string.
      vocabulary: tokenizes ``targets``.
      text_feature: the source feature holding each document's text.
      chunk: cut long documents into window-sized chunks (else they are
        trimmed to the window, and the loss of text is reported).
      metric_fns: seqio metric functions ``llmos eval`` reports, e.g.
        ``[@llmos_jax.evaluation.perplexity]`` (see ``llmos_jax.metrics``).
      postprocess_fn: seqio postprocessor applied to targets and predictions
        before the metrics, called as ``fn(text, example=..., is_target=...)``.

    Returns:
      ``name``, so gin can register and name the Task in one binding.
    """
    preprocessors = [
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_feature}),
        *_tokenize_then_cache_point(),
    ]
    if chunk:
        preprocessors.append(chunk_tokens)
    return _add_task(name, source, preprocessors,
                     {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)},
                     metric_fns=metric_fns, postprocess_fn=postprocess_fn)


@gin.configurable
def register_text_to_text_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
                               *, inputs_feature: str = "inputs",
                               targets_feature: str = "targets",
                               metric_fns: Sequence[MetricFn] = (),
                               postprocess_fn: PostprocessFn | None = None) -> str:
    """Registers a Task mapping one text to another: ``inputs`` -> ``targets``.

    Both features share ``vocabulary`` and end in EOS. ``metric_fns`` and
    ``postprocess_fn`` are as in :func:`register_lm_task`, e.g.
    ``register_text_to_text_task.metric_fns = [@llmos_jax.evaluation.bleu]``.

    Returns:
      ``name``.
    """
    preprocessors = [
        functools.partial(seqio.preprocessors.rekey,
                          key_map={"inputs": inputs_feature, "targets": targets_feature}),
        *_tokenize_then_cache_point(),
    ]
    features = {key: seqio.Feature(vocabulary=vocabulary, add_eos=True)
                for key in ("inputs", "targets")}
    return _add_task(name, source, preprocessors, features, metric_fns=metric_fns,
                     postprocess_fn=postprocess_fn)


def registered_names() -> list[str]:
    """All registered Task and Mixture names, sorted."""
    return sorted({*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names()})


@dataclasses.dataclass(frozen=True)
class ProviderSummary:
    """One line of ``llmos tasks list``."""

    name: str
    kind: str  # "task" or "mixture".
    splits: tuple[str, ...]
    features: dict[str, str]  # Output feature name to vocabulary class.
    mixes: tuple[tuple[str, float], ...] = ()


def summarize(name: str) -> ProviderSummary:
    """What a registered Task or Mixture offers, without reading any data."""
    provider = seqio.get_mixture_or_task(name)
    features = {key: type(feature.vocabulary).__name__
                for key, feature in provider.output_features.items()}
    if isinstance(provider, seqio.Mixture):
        mixes = tuple((task.name, float(provider.get_rate(task))) for task in provider.tasks)
        return ProviderSummary(name, "mixture", tuple(provider.splits), features, mixes)
    return ProviderSummary(name, "task", tuple(provider.splits), features)
