"""A tiny served model for API tests: random decoder weights and a byte tokenizer."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence

import httpx

import seqio

from inference_helpers import random_model

from llmos_jax.inference import DecodeConfig, DecodingEngine
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.serving.served_model import ServedModel
from llmos_jax.serving.tokenizer import VocabularyTokenizer

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def byte_tokenizer() -> VocabularyTokenizer:
    """The real byte vocabulary (UTF-8 bytes shifted by 3: 0 pad, 1 EOS, 2 unknown)."""
    return VocabularyTokenizer(seqio.ByteVocabulary())


def tiny_served_model(context: int = 128, name: str = "tiny", chat: bool = True,
                      seed: int = 3) -> ServedModel:
    config = TransformerConfig(vocab_size=259, num_layers=2, embed_dim=32, num_heads=2,
                               max_len=context, scan_layers=True)
    model = random_model(lambda rngs: DecoderLM(config, rngs=rngs), seed=seed, std=0.3)
    return ServedModel(name=name, model=model, tokenizer=byte_tokenizer(), max_context=context,
                       eos_id=1, chat_template=CHAT_TEMPLATE if chat else None, source="random")


def greedy_reference(served: ServedModel, max_new_tokens: int = 32):
    """`generate`'s greedy tokens for a prompt alone (EOS as the server's)."""
    engine = DecodingEngine(served.model)
    config = DecodeConfig(max_new_tokens=max_new_tokens, eos_id=served.eos_id)

    def run(prompt_ids: Sequence[int], max_tokens: int) -> list[int]:
        assert max_tokens <= max_new_tokens
        tokens = [int(t) for t in engine.generate([list(prompt_ids)], config)[0].tokens]
        if served.eos_id in tokens:  # generate keeps EOS; the server never sends it
            tokens = tokens[:tokens.index(served.eos_id)]
        return tokens[:max_tokens]
    return run


WORDS = ["<unk>", *(f"\u2581{w}" for w in "the cat sat on mat a dog ran to red barn".split()),
         "<|endoftext|>"]


def hf_gpt2_folder(directory, n_positions: int = 64) -> int:
    """config.json + model.safetensors (transformers, random weights) and a word-level
    tokenizer.json, with a chat template in tokenizer_config.json; returns the EOS id."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    eos = len(WORDS) - 1
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(WORDS),
                                     n_positions=n_positions, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"},
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }} "
                         "{% endfor %}{% if add_generation_prompt %}a{% endif %}"}))
    return eos


def wait_until_ready(base_url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Polls `/health/ready` of a `llmos serve` subprocess; fails with its output if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(base_url + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("llmos serve was not ready in time")
