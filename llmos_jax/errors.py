"""The one exception type for mistakes a user can fix.

Any layer raises :class:`UserError` when bad input (a flag, a gin binding, a
path, a shape) is the cause. The CLI prints its message alone, without a
traceback, and exits with status 2. The message must name the offending item
and say how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user; the message names the item and the fix."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """" Did you mean 'x'?" naming the closest candidate(s) to `word`, else ""."""
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=3, cutoff=0.6)
    if not matches:
        return ""
    best = difflib.SequenceMatcher(None, word, matches[0]).ratio()
    # Only near-ties with the best: weaker alternatives are noise, not help.
    matches = [m for m in matches if difflib.SequenceMatcher(None, word, m).ratio() >= best - 0.05]
    return " Did you mean " + " or ".join(f"'{match}'" for match in matches) + "?"
