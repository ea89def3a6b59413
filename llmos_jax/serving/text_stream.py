"""Token ids to streamed text: whole characters only, stop strings decided before sending.

A streaming client must never see half a UTF-8 character (a byte vocabulary
spells one Chinese character over three tokens) nor text that later turns out
to be the start of a stop string. `TextStream` turns each new token into the
text that is safe to send now, and the concatenation of everything it sends
equals the text a non-streamed request gets (both go through it).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmos_jax.serving.served_model import TextTokenizer

__all__ = ["TextStream"]

_INCOMPLETE = "\ufffd"  # what decode gives for an unfinished multi-byte character
# Tokens decoded before the new ones, so tokenizers that render a token
# differently at the start of a text (SentencePiece's leading space) stay right.
_CONTEXT_TOKENS = 6


class TextStream:
    """The text of one generated sequence, released as it becomes final.

    Args:
      tokenizer: Decodes the token ids.
      stop: Stop strings; the text ends before the first one found, which is never sent.
    """

    def __init__(self, tokenizer: TextTokenizer, stop: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._decoded_upto = 0      # ids[:_decoded_upto] are in _text
        self._text = ""             # decoded text of ids[:_decoded_upto]
        self._sent = 0              # characters of _text already released
        self.stopped = False        # a stop string was found
        self.stop_reason: str | None = None

    @property
    def text(self) -> str:
        """All text released so far."""
        return self._text[:self._sent]

    def add(self, token_id: int) -> str:
        """Adds a token; returns the newly final text (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(int(token_id))
        self._decode(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """The text held back so far, released at the end of the sequence."""
        if self.stopped:
            return ""
        self._decode(final=True)
        return self._release(final=True)

    def _decode(self, final: bool) -> None:
        start = max(0, self._decoded_upto - _CONTEXT_TOKENS)
        before = self._tokenizer.decode(self._ids[start:self._decoded_upto])
        after = self._tokenizer.decode(self._ids[start:])
        if not final and (after.endswith(_INCOMPLETE) or not after.startswith(before)):
            return  # wait for the character (or the tokenizer's rendering) to complete
        if after.startswith(before):
            self._text += after[len(before):]
        else:  # final flush of a tokenizer that rewrote the context: take its tail as is
            self._text += after[len(before):] if len(after) > len(before) else ""
        self._decoded_upto = len(self._ids)

    def _release(self, final: bool) -> str:
        text = self._text
        if self._stop:
            # A stop string may straddle already-released text and new text.
            search_from = max(0, self._sent - max(len(s) for s in self._stop) + 1)
            found = [(text.find(s, search_from), s) for s in self._stop]
            found = [(at, s) for at, s in found if at >= 0]
            if found:
                at, stop = min(found)
                self.stopped, self.stop_reason = True, stop
                self._text = text[:at]
                released, self._sent = text[self._sent:at], at
                return released
            if not final:
                text = text[:len(text) - self._held_back(text)]
        released = text[self._sent:]
        self._sent = len(text)
        return released

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that starts some stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return min(longest, len(text) - self._sent)
