"""`llmos report`: a self-contained HTML report of a run (or several, overlaid).

matplotlib loads inside the handler, so building the command stays cheap.
"""

from __future__ import annotations

from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.errors import UserError

REPORT_EXAMPLE = "llmos report --model_dir=/tmp/llmos_quickstart --compare=/tmp/other_run"


def report_command() -> Command:
    """Builds the `llmos report` command."""

    def run(flags: ParsedFlags) -> int:
        model_dir = flags.one("model_dir")
        if not model_dir:
            raise UserError(f"llmos report needs --model_dir, the run's folder, e.g. "
                            f"{REPORT_EXAMPLE}")
        from llmos_jax.monitoring.run_report import write_report

        path = write_report([model_dir, *flags.all("compare")], flags.one("output"))
        print(f"wrote {path}")
        return 0

    return Command(
        name="report",
        summary="Write an HTML report of a training run: curves, alerts, metrics, samples.",
        description="Write a self-contained HTML report of a training run (plots embedded): "
        "train and eval loss, learning rate, gradient norm, tokens/s and MFU with alerts "
        "marked, the alerts, final metrics, text samples and config.gin.",
        usage="llmos report --model_dir=DIR [--compare=DIR ...] [--output=FILE]",
        flags=(
            Flag("model_dir", "DIR", "The run folder (`llmos train --model_dir`)."),
            Flag("compare", "DIR", "Another run to overlay; repeatable.", repeatable=True),
            Flag("output", "FILE", "Where to write the page (default DIR/report.html)."),
        ),
        example=REPORT_EXAMPLE,
        run=run,
    )
