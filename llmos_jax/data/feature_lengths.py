"""Task feature lengths per feature converter, with no seqio or TensorFlow.

Kept apart from ``feature_converters`` (which builds the seqio converters) so
that a host without TensorFlow can still check a split snapshot's lengths
against the run's (``LMBatches.snapshot_dir``). The layout of each converter
is documented in ``feature_converters``.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmos_jax.errors import did_you_mean
from llmos_jax.errors import UserError

CONVERTER_NAMES: tuple[str, ...] = ("lm", "prefix_lm", "enc_dec", "next_token")


def check_converter_name(name: str, setting: str) -> None:
    """Raises a UserError naming ``setting`` and the closest converter name."""
    if name not in CONVERTER_NAMES:
        raise UserError(f"{setting}={name!r} is not a feature converter; use one of "
                        f"{list(CONVERTER_NAMES)}.{did_you_mean(name, CONVERTER_NAMES)}")


def task_feature_lengths(name: str, sequence_length: int | Mapping[str, int], *,
                         setting: str = "LMBatches.sequence_length") -> dict[str, int]:
    """Task feature lengths for converter ``name`` from one row length or an explicit mapping.

    Raises:
      UserError: a non-positive length, or a mapping missing a needed feature.
    """
    check_converter_name(name, "LMBatches.feature_converter")
    needed = ("targets",) if name in ("lm", "next_token") else ("inputs", "targets")
    if isinstance(sequence_length, Mapping):
        lengths = {key: int(value) for key, value in sequence_length.items()}
        missing = [key for key in needed if key not in lengths]
        if missing:
            raise UserError(f"{setting}={dict(sequence_length)} lacks {missing}, needed by the "
                            f"{name!r} feature converter; give a length for each of {list(needed)}.")
    elif name == "next_token":
        lengths = {"targets": int(sequence_length) + 1}
    elif name == "prefix_lm":
        lengths = {"inputs": sequence_length // 2, "targets": sequence_length - sequence_length // 2}
    else:
        lengths = {key: int(sequence_length) for key in needed}
    if any(value <= 0 for value in lengths.values()):
        raise UserError(f"{setting}={sequence_length} gives lengths {lengths}; every length "
                        "must be positive.")
    return lengths
