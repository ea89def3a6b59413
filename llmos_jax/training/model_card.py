"""MODEL_CARD.md: what an export is, in words a person reads before serving it.

Written into every export (`model_dir/export`, `model_dir/best`) from the same
metadata as `meta.json`: the family and sizes, the task, the steps trained,
the metrics known when it was written, its vocabularies, and how to serve it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CARD_FILE = "MODEL_CARD.md"

_SIZE_FIELDS = ("num_layers", "num_decoder_layers", "embed_dim", "num_heads", "num_kv_heads",
                "head_dim", "mlp_dim", "vocab_size", "max_len", "position_embedding", "norm",
                "mlp_activation", "param_dtype")


def model_card(meta: Mapping[str, Any], *, num_params: int | None = None,
               metrics: Mapping[str, float] | None = None) -> str:
    """The Markdown card of an export whose `meta.json` is `meta`.

    Args:
      meta: The export's metadata (`run_metadata.describe_run` plus `step`, the
        objective, the vocabulary manifest and, for `best/`, the `best` record).
      num_params: Parameters in the export.
      metrics: Metric name -> value known at export time (held-out loss, task metrics).
    """
    config = meta.get("model_config") or {}
    family = meta.get("model_family", "unknown")
    task = (meta.get("data") or {}).get("task_name") or "unknown"
    best = meta.get("best")
    what = (f"the best evaluation of the run by {best.get('metric')} = {best.get('value'):g} "
            f"({best.get('task_name')}/{best.get('split')})" if best
            else "the parameters at the end of the run")
    lines = [f"# {task}: a {family} model", "",
             f"Exported by `llmos train` at step {meta.get('step', 'unknown')}: {what}.", "",
             "| | |", "|---|---|",
             f"| family | {family} |",
             f"| objective | {(meta.get('objective') or {}).get('name', 'unknown')} |",
             f"| task | {task} |",
             f"| steps | {meta.get('step', 'unknown')} |"]
    if num_params is not None:
        lines.append(f"| parameters | {num_params:,} ({num_params / 1e6:.2f}M) |")
    lines += [f"| {field} | {config[field]} |" for field in _SIZE_FIELDS
              if config.get(field) is not None]
    lines += _vocabulary_rows(meta)
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.6g} |" for name, value in sorted(metrics.items())
                  if isinstance(value, (int, float))]
    lines += ["", "## Serving", "",
              "This folder is self-contained: `params/` (Orbax), `meta.json` (the model config "
              "and family, the vocabulary manifest) and `vocabulary/` need no gin file and no "
              "seqio Task.", "",
              "```bash",
              "llmos serve --model=PATH_TO_THIS_FOLDER          # add --chat-template=FILE "
              "for /v1/chat/completions",
              "```", ""]
    return "\n".join(lines)


def _vocabulary_rows(meta: Mapping[str, Any]) -> list[str]:
    manifest = meta.get("vocabularies")
    if not manifest:
        described = meta.get("vocabulary") or {}
        return [f"| vocabulary | {described.get('class', 'unknown')} "
                f"({described.get('vocab_size', '?')} ids; not carried by this export) |"]
    rows = []
    for feature in ("inputs", "outputs"):
        entry = manifest.get(feature) or {}
        described = entry.get("description") or {}
        rows.append(f"| {feature} vocabulary | {entry.get('kind', 'unknown')}: "
                    f"{described.get('class', '?')}, {described.get('vocab_size', '?')} ids |")
    rows.append(f"| EOS appended to inputs | {'yes' if manifest.get('inputs_add_eos') else 'no'} |")
    return rows
