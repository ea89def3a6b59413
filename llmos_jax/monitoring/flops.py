"""MFU: achieved model FLOP/s over the hardware peak.

The numerator, model FLOPs per token, is a property of the architecture and
comes from the model family (`llmos_jax.models.flops`, named by each
`llmos_jax.models.families.ModelFamily`); this module only divides. The
convention is written out with a worked example in ``docs/mfu.md``.
"""

from llmos_jax.errors import UserError


def mfu(*, flops_per_token: float, tokens_per_second: float, peak_flops_per_second: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak.

    ``tokens_per_second`` and ``peak_flops_per_second`` must cover the same
    hardware: either one device's throughput and one device's peak, or the
    global throughput and the peak times the number of devices.

    Raises:
        UserError: ``peak_flops_per_second`` is not a positive finite number.
    """
    peak = float(peak_flops_per_second)
    if not peak > 0 or peak == float("inf"):
        raise UserError(
            f"MFU: peak_flops_per_second={peak_flops_per_second!r} must be a positive "
            "finite number; set the device's peak FLOP/s or let it be measured."
        )
    return float(flops_per_token) * float(tokens_per_second) / peak
