#!/usr/bin/env python
"""Trains the SentencePiece vocabulary of a seq2seq fine-tuning task on its train split.

    python tools/train_seq2seq_vocab.py --task=multi30k_en_de_spm --vocab_size=8000 \\
        --output=vocab/multi30k_en_de_8k
    llmos train ... --gin.register_multi30k_en_de_spm.spm_model="'vocab/multi30k_en_de_8k.model'"

One model covers both sides (``inputs`` and ``targets``: English and German
for Multi30k, dialogue and summary for DialogSum), so an encoder-decoder can
share its embeddings. Only the train split is read, so validation and test
text never shape the vocabulary. Ids follow seqio (0 pad, 1 EOS, 2 UNK) and
``--character_coverage`` defaults to 1.0 (Latin alphabets: no character of
the train text becomes UNK); see ``llmos_jax.data.sentencepiece_vocab``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from llmos_jax.data.finetune_tasks import dialogsum, multi30k  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402

LOADERS = {"multi30k_en_de_spm": multi30k.load_multi30k,
           "dialogsum_spm": dialogsum.load_dialogsum}
"""Task name to the pure loader of its examples."""


def training_texts(task: str, split: str = "train") -> Iterator[str]:
    """Every ``inputs`` text of ``split``, then every ``targets`` text."""
    examples = LOADERS[task](split)
    yield from (example["inputs"] for example in examples)
    yield from (example["targets"] for example in examples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(LOADERS))
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--output", required=True, help="path prefix of PREFIX.model/.vocab")
    parser.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
    parser.add_argument("--character_coverage", type=float, default=1.0)
    parser.add_argument("--data_dir",
                        help="the data directory (else $LLMOS_DATA_DIR or the default)")
    args = parser.parse_args(argv)
    from llmos_jax.data.sentencepiece_vocab import train_sentencepiece

    if args.data_dir:
        os.environ["LLMOS_DATA_DIR"] = args.data_dir
    try:
        model = train_sentencepiece(training_texts(args.task), args.output, args.vocab_size,
                                    model_type=args.model_type,
                                    character_coverage=args.character_coverage)
    except UserError as error:
        print(f"train_seq2seq_vocab: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {model} ({args.vocab_size} pieces); use it with "
          f"--gin.register_{args.task}.spm_model=\"'{model}'\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
