"""What decoding returns: per request, its n-best completions (or its target score) or its error."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated continuation.

    Attributes:
      tokens: The generated ids (prompt excluded), ending with the EOS or stop
        sequence that ended them, if any.
      score: Beam search: `sum_logprobs / len(tokens) ** length_penalty` (HF's
        `sequences_scores`). Greedy and sampling: the model's log-likelihood
        of `tokens` (sum of log-softmax of the unprocessed logits).
      finish_reason: "eos", "stop" (a stop sequence) or "length"
        (`max_new_tokens` or the cache end).
      text: `tokens` decoded without the final EOS / stop sequence, when
        `generate` was given a vocabulary.
    """

    tokens: tuple[int, ...]
    score: float
    finish_reason: str
    text: str | None = None


@dataclasses.dataclass(frozen=True)
class RequestResult:
    """A request's completions (best first), or why it could not be decoded.

    A bad request (e.g. a prompt longer than the cache) gets `error` and no
    completions; the other requests of the batch are decoded normally.
    """

    completions: tuple[Completion, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str | None:
        return self.completions[0].text if self.completions else None

    @property
    def tokens(self) -> tuple[int, ...] | None:
        return self.completions[0].tokens if self.completions else None

    @property
    def score(self) -> float | None:
        return self.completions[0].score if self.completions else None


@dataclasses.dataclass(frozen=True)
class TargetScore:
    """Sum of the target tokens' log-probabilities, their count, or an error.

    `num_correct` counts target tokens that are the model's argmax (for token
    accuracy); None when the request failed.
    """

    log_likelihood: float | None
    num_tokens: int
    error: str | None = None
    num_correct: int | None = None
