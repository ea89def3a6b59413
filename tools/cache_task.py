#!/usr/bin/env python
"""Caches seqio Tasks' tokenized examples with Apache Beam, for `LMBatches.use_cached`.

    python tools/cache_task.py --task=tang_poems_bytes --output_cache_dir=/data/cache
    python tools/cache_task.py --task=my_task --module_import=my.tasks \\
        --gin_file=experiments/x.gin --gin.data_dir.path="'/data'" \\
        --output_cache_dir=gs://bucket/cache \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp

Flags this tool does not know are Beam pipeline options, passed through
unchanged (`--runner`, `--project`, `--num_workers`, `--direct_num_workers`,
...), so the same command runs locally, on Dataflow, Flink or Spark. Without
`--runner` it uses Beam's local FnApiRunner, the engine the DirectRunner runs
batch pipelines on (`--runner=DirectRunner` also works, but Beam 2.77's
DirectRunner first tries to download its Prism runner from GitHub).

Built-in tasks (`llmos tasks list`) need no import; others are registered by
`--module_import` modules. Gin files and `--gin.` bindings configure them
(and are re-applied on remote workers). Then train with
`--gin.LMBatches.use_cached=True --gin.LMBatches.cache_dirs="['DIR']"`.
Needs the beam extra: pip install 'llmos_jax[beam]'.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="append", required=True, help="task to cache; repeatable")
    parser.add_argument("--output_cache_dir", required=True,
                        help="cache folder, later listed in LMBatches.cache_dirs")
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_search_path", action="append", default=[])
    parser.add_argument("--data_dir", help="the data directory (gin data_dir.path)")
    parser.add_argument("--module_import", action="append", default=[],
                        help="module whose import registers the task; repeatable")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing cache")
    parser.add_argument("--min_shards", type=int, default=1,
                        help="at least this many TFRecord shards per split")
    args, rest = parser.parse_known_args(argv)
    bindings = [f"data_dir.path = {args.data_dir!r}"] if args.data_dir else []
    pipeline_args = []
    for item in rest:
        if item.startswith("--gin."):
            key, _, value = item[len("--gin."):].partition("=")
            bindings.append(f"{key} = {value}")
        else:
            pipeline_args.append(item)
    return args, bindings, pipeline_args


def main(argv=None) -> int:
    args, bindings, pipeline_args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import gin

    from llmos_jax.cli.gin_config import CONFIGURABLE_MODULES, parse_gin
    from llmos_jax.cli.main import user_message
    from llmos_jax.data.task_cache import cache_task
    from llmos_jax.errors import UserError

    try:
        for module in args.module_import:
            importlib.import_module(module)
        if args.gin_file or bindings:
            parse_gin(args.gin_file, bindings, args.gin_search_path,
                      configurable_modules=CONFIGURABLE_MODULES, finalize=False)
        config_text = gin.config_str()
        for task in args.task:
            path = cache_task(task, args.output_cache_dir, pipeline_args,
                              overwrite=args.overwrite, min_shards=args.min_shards,
                              gin_config_text=config_text, modules=args.module_import)
            print(f"cached {task!r} in {path}")
    except UserError as error:
        print(f"cache_task: error: {user_message(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
