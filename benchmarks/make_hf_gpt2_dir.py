#!/usr/bin/env python
"""Writes a GPT-2-small-sized Hugging Face directory with random weights and a local tokenizer.

The serving benchmark (`benchmarks/serve_load.py`) loads the same directory into every
server it compares, so the weights must be one file set that both `transformers` and
`llmos serve` read, and it must be made with no network (no hub download): the
weights come from a seeded `GPT2LMHeadModel`, the tokenizer is built here with the
`tokenizers` library.

The tokenizer is word-level over 50,257 made-up words (`w1` ... `w50255`, `<unk>` at 0,
`<|endoftext|>` at 50256 as in GPT-2), with a Metaspace pre-tokenizer and decoder so
that streamed tokens decode to space-separated words. A prompt of N made-up words
(`prompt_of_length`) is exactly N tokens, which is how the benchmark fixes its prompt
length on every server.

`eos_token_id` is left out of the model and generation configs: random weights emit
EOS at random, and the benchmark needs exactly 64 output tokens from every server,
including ones (sequential `generate`, `transformers serve`) that have no `ignore_eos`.

    python benchmarks/make_hf_gpt2_dir.py /tmp/gpt2_small_random
"""

from __future__ import annotations

import argparse
import json
import os

VOCAB_SIZE = 50257
EOS = "<|endoftext|>"
UNK = "<unk>"
SPACE = "\u2581"  # Metaspace's word-start marker


def words() -> list[str]:
    """The tokenizer's vocabulary in id order."""
    return [UNK] + [f"{SPACE}w{i}" for i in range(1, VOCAB_SIZE - 1)] + [EOS]


def prompt_of_length(n: int, seed: int) -> str:
    """A prompt that is exactly `n` tokens under this tokenizer (distinct per seed)."""
    import random

    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(1, VOCAB_SIZE - 1)}" for _ in range(n))


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(words())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    tokenizer.add_special_tokens([EOS])
    return tokenizer


def build(directory: str, seed: int = 0) -> None:
    """Writes config.json, generation_config.json, model.safetensors and the tokenizer."""
    import torch
    import transformers

    os.makedirs(directory, exist_ok=True)
    config = transformers.GPT2Config(
        n_layer=12, n_embd=768, n_head=12, vocab_size=VOCAB_SIZE, n_positions=1024,
        bos_token_id=None, eos_token_id=None, torch_dtype="float32")
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval().to(torch.float32)
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = None
    model.save_pretrained(directory, safe_serialization=True)

    build_tokenizer().save(os.path.join(directory, "tokenizer.json"))
    # A minimal chat template so chat requests work on every server (the playground's chat mode).
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": UNK,
                   "model_max_length": 1024, "chat_template": template}, f, indent=1)
    # No pad/eos in the tokenizer config either: some servers stop on the tokenizer's EOS.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.directory, args.seed)
    print(f"wrote {args.directory}")


if __name__ == "__main__":
    main()
