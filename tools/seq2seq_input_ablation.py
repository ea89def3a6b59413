#!/usr/bin/env python
"""How much a trained encoder-decoder reads its input: target NLL under the right input vs another.

Scores every target of a split (teacher forcing, `llmos_jax.inference.score`)
three ways: under its own input, under the next example's input, and under an
input of EOS alone. A model that translates or summarises loses a lot under a
wrong input; one that has only learnt the targets' language loses little.
ROUGE alone cannot tell them apart: on DialogSum one fixed, summary-shaped
sentence scores about 27 ROUGE-1.

    python tools/seq2seq_input_ablation.py \\
        --gin_file=experiments/t5_dialogsum_spm/t5_dialogsum_four_epochs.gin \\
        --checkpoint=runs/t5_dialogsum_r3 [--split=validation]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batch_size", type=int, default=25)
    from llmos_jax.cli.gin_config import parse_tool_args

    args, bindings = parse_tool_args(parser, argv)

    import numpy as np

    from llmos_jax.inference.model_loading import load_for_inference
    from llmos_jax.inference.scoring import score

    loaded = load_for_inference(args.gin_file, bindings, checkpoint=args.checkpoint,
                                split=args.split)
    lengths = loaded.settings["sequence_length"]
    dataset = loaded.provider.get_dataset(lengths, split=args.split, shuffle=False)
    pairs = [(list(ex["inputs"][:lengths["inputs"]]), list(ex["targets"][:lengths["targets"]]))
             for ex in dataset.as_numpy_iterator()]
    inputs, targets = [p[0] for p in pairs], [p[1] for p in pairs]
    eos = [loaded.vocabularies.inputs.eos_id]
    conditions = {
        "own input": inputs,
        "next example's input": inputs[1:] + inputs[:1],
        "EOS only": [eos] * len(inputs),
    }
    for name, prompts in conditions.items():
        total, count = 0.0, 0
        for i in range(0, len(targets), args.batch_size):
            for result in score(loaded.model, loaded.params, prompts[i:i + args.batch_size],
                                targets[i:i + args.batch_size]):
                total -= result.log_likelihood
                count += result.num_tokens
        print(f"{name:>24}: NLL {total / count:.4f} nats/piece (perplexity "
              f"{float(np.exp(total / count)):.1f}) over {count} target pieces of "
              f"{len(targets)} examples", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
