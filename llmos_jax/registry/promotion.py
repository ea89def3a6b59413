"""The promote gate: move an alias to a candidate only if it beats the current holder.

Both versions are scored on the same task and split by an evaluation the
caller passes in (the CLI's `llmos eval` machinery), the scores are recorded
on both versions, and the alias moves only when the candidate wins by
`min_delta` and the alias still points where it pointed when the gate began
(another promotion in between is not overwritten).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

from llmos_jax.errors import UserError
from llmos_jax.registry.model_uri import ModelUri
from llmos_jax.registry.store import Store
from llmos_jax.registry.versions import FetchedVersion, fetch_version, get_version, record_eval

log = logging.getLogger("llmos_jax.registry")

Evaluate = Callable[[FetchedVersion], Mapping[str, Mapping[str, float]]]


@dataclasses.dataclass(frozen=True)
class PromotionResult:
    """What the gate decided.

    Attributes:
      promoted: Whether the alias now points at the candidate.
      candidate_score: The candidate's score.
      incumbent_score: The alias holder's score (None: the alias was unset).
      incumbent_version: The version the alias pointed at before.
      reason: One line for the user.
    """

    promoted: bool
    candidate_score: float
    incumbent_score: float | None
    incumbent_version: str | None
    reason: str


def metric_value(results: Mapping[str, Mapping[str, float]], metric: str, uri: str) -> float:
    """`metric` (`accuracy` or `task/accuracy`) in one evaluation's results."""
    flat = {f"{task}/{name}": value for task, values in results.items()
            for name, value in values.items()}
    if metric in flat:
        return float(flat[metric])
    matches = [values[metric] for values in results.values() if metric in values]
    if len(matches) != 1:
        names = sorted({name for values in results.values() for name in values})
        raise UserError(f"--metric={metric!r}: {uri}'s evaluation has no single metric of that "
                        f"name; it reports {', '.join(names) or 'nothing'}.")
    return float(matches[0])


def promote(store: Store, name: str, candidate: str, alias: str, *, metric: str,
            higher_is_better: bool, min_delta: float, evaluate: Evaluate) -> PromotionResult:
    """Scores the candidate and the alias holder, and moves the alias if the candidate wins.

    Raises:
      UserError: unknown model, version or metric; the alias moved during the
        evaluation (nothing is changed then).
    """
    get_version(store, ModelUri(name=name, version=candidate), flag="--candidate")
    alias_before = _alias_target(store, name, alias)
    scored = {}
    for version in dict.fromkeys(v for v in (candidate, alias_before) if v is not None):
        fetched = fetch_version(store, ModelUri(name=name, version=version),
                                flag="--candidate" if version == candidate else "--alias")
        results = evaluate(fetched)
        record_eval(store, name, version, results)
        scored[version] = metric_value(results, metric, fetched.uri)
        log.info("models:/%s/%s scores %s = %.6g", name, version, metric, scored[version])
    new_score = scored[candidate]
    old_score = scored.get(alias_before) if alias_before is not None else None
    if alias_before == candidate:
        return PromotionResult(False, new_score, old_score, alias_before,
                               f"@{alias} already points at version {candidate}")
    if old_score is not None:
        gain = (new_score - old_score) if higher_is_better else (old_score - new_score)
        if gain < min_delta:
            return PromotionResult(
                False, new_score, old_score, alias_before,
                f"kept @{alias} on version {alias_before}: candidate {candidate} scores "
                f"{metric} = {new_score:.6g} against {old_score:.6g} (improvement {gain:+.6g}, "
                f"needed {min_delta:+.6g})")
    now = _alias_target(store, name, alias)
    if now != alias_before:
        raise UserError(f"@{alias} of {name!r} moved from version {alias_before} to {now} while "
                        "the gate evaluated; nothing was changed. Run the promotion again.")
    store.client.set_registered_model_alias(name, alias, candidate)
    against = (f"against {old_score:.6g} of version {alias_before}" if old_score is not None
               else "(the alias was unset)")
    return PromotionResult(True, new_score, old_score, alias_before,
                           f"moved @{alias} to version {candidate}: {metric} = {new_score:.6g} "
                           f"{against}")


def _alias_target(store: Store, name: str, alias: str) -> str | None:
    target = dict(store.client.get_registered_model(name).aliases or {}).get(alias)
    return None if target is None else str(target)
