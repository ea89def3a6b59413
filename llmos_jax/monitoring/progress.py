"""The training progress bar: step/total, ETA, loss and tokens/s.

A thin wrapper over tqdm. On a terminal it redraws in place and follows the
window width. When the stream is not a terminal (CI logs, ``kubectl logs``),
in-place redraws would pile up as one endless ``\\r``-joined line, so it prints
one plain ASCII line at most every ``NON_TTY_MIN_INTERVAL_S`` seconds instead.
"""

import sys
import types
from typing import TextIO

import tqdm

TTY_MIN_INTERVAL_S = 0.1
NON_TTY_MIN_INTERVAL_S = 5.0


def format_tokens_per_second(tokens_per_second: float) -> str:
    """``12345.0`` -> ``"12.3k tok/s"``; units k, M, G, T."""
    value = float(tokens_per_second)
    if abs(value) < 999.5:
        return f"{value:.0f} tok/s"
    for unit in ("k", "M", "G", "T"):
        value /= 1000.0
        if abs(value) < 999.95 or unit == "T":
            return f"{value:.1f}{unit} tok/s"
    raise AssertionError("unreachable")


class _OneLinePerRefresh:
    """Turns tqdm's ``\\r`` redraws into whole lines, for streams that are not terminals."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


class TrainProgress:
    """Progress of training from ``initial_step`` to ``total_steps``.

    Args:
        total_steps: the step training ends at.
        initial_step: the step training (re)starts from, so a resumed run
            shows the right position and a rate/ETA measured from here.
        enabled: ``False`` shows nothing (e.g. non-zero processes).
        stream: where to draw; default ``sys.stderr``, keeping stdout clean.
    """

    def __init__(
        self,
        total_steps: int,
        initial_step: int = 0,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        stream = sys.stderr if stream is None else stream
        is_tty = bool(getattr(stream, "isatty", lambda: False)())
        self._bar = tqdm.tqdm(
            total=total_steps,
            initial=initial_step,
            unit="step",
            disable=not enabled,
            file=stream if is_tty else _OneLinePerRefresh(stream),
            dynamic_ncols=is_tty,
            ascii=None if is_tty else True,
            mininterval=TTY_MIN_INTERVAL_S if is_tty else NON_TTY_MIN_INTERVAL_S,
            miniters=1,  # refresh on time alone; steps are slow enough to check the clock
            smoothing=0.1,
        )

    def update(
        self,
        step: int,
        *,
        loss: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        """Moves the bar to ``step`` (an absolute position) and shows the given stats."""
        postfix = []
        if loss is not None:
            postfix.append(f"loss={float(loss):.4g}")
        if tokens_per_second is not None:
            postfix.append(format_tokens_per_second(tokens_per_second))
        if postfix:
            self._bar.set_postfix_str(", ".join(postfix), refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        """Draws the final state and releases the bar."""
        self._bar.close()

    def __enter__(self) -> "TrainProgress":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()
