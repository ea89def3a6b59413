"""Text-generation metrics: corpus BLEU (sacrebleu) and ROUGE (rouge-score).

Thin, seqio-shaped wrappers (``fn(targets, predictions)``) around the
reference packages, so our numbers are theirs. Each target is a string or a
list of reference strings; examples may have different numbers of
references. ``sacrebleu`` and ``rouge-score`` are imported when a metric is
first called, so importing this module stays light; they come with
``pip install 'llmos_jax[eval]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from llmos_jax.errors import UserError

Reference = str | Sequence[str]
DEFAULT_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _import_reference_package(module: str, package: str, metric: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UserError(
            f"The {metric} metric needs the '{package}' package, which is not installed; "
            "install it with: pip install 'llmos_jax[eval]'"
        ) from error


def _references_per_example(metric: str, targets: Sequence[Reference], num_predictions: int) -> list[list[str]]:
    """Each target as a non-empty list of reference strings."""
    if len(targets) != num_predictions:
        raise UserError(
            f"{metric}: got {len(targets)} targets but {num_predictions} predictions; "
            "the metric needs one prediction per target example."
        )
    if not targets:
        raise UserError(f"{metric}: no examples to score; the evaluation split is empty.")
    references = []
    for index, target in enumerate(targets):
        example_references = [target] if isinstance(target, str) else list(target)
        if not example_references or not all(isinstance(r, str) for r in example_references):
            raise UserError(
                f"{metric}: target {index} must be a string or a non-empty list of strings, "
                f"got {target!r}."
            )
        references.append(example_references)
    return references


def bleu(
    targets: Sequence[Reference], predictions: Sequence[str], *, tokenize: str = "13a"
) -> dict[str, float]:
    """sacrebleu corpus BLEU (0-100) of the predictions against their references.

    Uses sacrebleu's defaults (``tokenize="13a"``, exponential smoothing,
    case-sensitive), i.e. the score ``sacrebleu`` prints on the command line.

    Args:
      targets: per example, one reference string or a list of them.
      predictions: one hypothesis string per example.
      tokenize: sacrebleu tokenizer name, e.g. ``"13a"``, ``"intl"``, ``"zh"``.

    Returns:
      ``{"bleu": score}``.
    """
    sacrebleu = _import_reference_package("sacrebleu", "sacrebleu", "bleu")
    references = _references_per_example("bleu", targets, len(predictions))
    # sacrebleu wants reference *streams* (the k-th reference of every
    # example); examples with fewer references are padded with None.
    num_streams = max(len(r) for r in references)
    streams = [
        [r[k] if k < len(r) else None for r in references] for k in range(num_streams)
    ]
    return {"bleu": sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score}


def rouge(
    targets: Sequence[Reference],
    predictions: Sequence[str],
    *,
    rouge_types: Sequence[str] = DEFAULT_ROUGE_TYPES,
    use_stemmer: bool = True,
) -> dict[str, float]:
    """rouge-score F-measures (0-100) with Porter stemming, averaged over examples.

    With several references, each example takes, per ROUGE type, the
    reference with the highest F-measure (rouge-score's ``score_multi``);
    those maxima are then averaged. The plain mean is reported, not
    rouge-score's bootstrap median. ``rougeLsum`` treats each line as a
    sentence, so put a newline between sentences to get summary-level LCS;
    without newlines it equals ``rougeL``. rouge-score's tokenizer lowercases
    and keeps only ASCII letters and digits.

    Args:
      targets: per example, one reference string or a list of them.
      predictions: one generated string per example.
      rouge_types: rouge-score type names.
      use_stemmer: Porter-stem tokens before matching, as in the ROUGE papers.

    Returns:
      ``{rouge_type: mean F-measure}`` for each requested type.
    """
    rouge_scorer = _import_reference_package("rouge_score.rouge_scorer", "rouge-score", "rouge")
    references = _references_per_example("rouge", targets, len(predictions))
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(rouge_types, 0.0)
    for example_references, prediction in zip(references, predictions):
        scores = scorer.score_multi(example_references, prediction)
        for rouge_type in rouge_types:
            totals[rouge_type] += scores[rouge_type].fmeasure
    return {rouge_type: 100.0 * total / len(predictions) for rouge_type, total in totals.items()}
