"""TrainProgress: absolute positions, formatted stats, log-friendly output off a terminal."""

import io

import pytest

from llmos_jax.monitoring.progress import TrainProgress, format_tokens_per_second


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "rate, text",
    [(0, "0 tok/s"), (950.4, "950 tok/s"), (999.6, "1.0k tok/s"), (12_345, "12.3k tok/s"),
     (4_560_000, "4.6M tok/s"), (2.5e9, "2.5G tok/s")],
)
def test_tokens_per_second_format(rate, text):
    assert format_tokens_per_second(rate) == text


def test_non_tty_prints_whole_lines_without_spamming():
    stream = io.StringIO()
    with TrainProgress(100, initial_step=10, stream=stream) as progress:
        for step in range(11, 101):
            progress.update(step, loss=2.5, tokens_per_second=12_345.0)
    output = stream.getvalue()
    assert "\r" not in output
    lines = output.splitlines()
    # The first draw and the final one; updates within 5 s print nothing.
    assert len(lines) == 2
    assert lines[0].startswith(" 10%|") and "10/100" in lines[0]
    assert lines[1].startswith("100%|") and "100/100" in lines[1]
    assert lines[1].endswith("loss=2.5, 12.3k tok/s]")


def test_update_sets_the_position_rather_than_adding():
    stream = io.StringIO()
    with TrainProgress(100, stream=stream) as progress:
        progress.update(40)
        progress.update(40)
        progress.update(37, loss=3.25)
    final = stream.getvalue().splitlines()[-1]
    assert " 37/100 " in final and final.endswith("loss=3.25]")


def test_terminal_redraws_in_place():
    stream = FakeTerminal()
    with TrainProgress(10, stream=stream) as progress:
        progress.update(10)
    assert stream.getvalue().startswith("\r") and "10/10" in stream.getvalue()


def test_disabled_shows_nothing():
    stream = io.StringIO()
    with TrainProgress(10, enabled=False, stream=stream) as progress:
        progress.update(5, loss=1.0, tokens_per_second=1.0)
    assert stream.getvalue() == ""
