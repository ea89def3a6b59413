"""`llmos serve --model=<Hugging Face Llama folder>`: the model's own chat template,
tokenizer.json, and the same greedy reply as transformers' `generate`."""

import json
import os
import subprocess
import sys

import httpx
import pytest

pytest.importorskip("safetensors")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from convert_helpers import randomise_torch  # noqa: E402
from serving_api_helpers import wait_until_ready  # noqa: E402

from llmos_jax.serving.server import free_port  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]",
         *(f"\u2581{w}" for w in "the cat sat on mat a dog ran to red barn".split())]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
            "{{ m['content'] }}[/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
            "{% endfor %}")


def llama_folder(directory):
    """A random LlamaForCausalLM (GQA, untied) with a word-level tokenizer.json and a
    Llama-2-style chat template in tokenizer_config.json."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    config = transformers.LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = randomise_torch(torch, transformers.LlamaForCausalLM(config), r"norm\.weight")
    model.save_pretrained(directory)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    tokenizer.add_special_tokens(["<s>", "</s>", "[INST]", "[/INST]"])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE}))
    return model, tokenizer


def test_llmos_serve_chats_with_a_llama_folder_like_transformers(tmp_path):
    import torch

    folder = tmp_path / "tiny_llama"
    hf_model, tokenizer = llama_folder(folder)
    prompt = "<s>[INST] the dog ran to the red barn[/INST]"
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    assert ids[:2] == [1, 3] and ids[-1] == 4 and 0 not in ids
    hf_model.generation_config.eos_token_id = None  # as ignore_eos: EOS is just a token
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                     max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected_text = tokenizer.decode(expected[0, len(ids):].tolist())

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmos_jax", "serve", f"--model={folder}", f"--port={port}",
         "--max-slots=2", "--prefill-chunk=32"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process)
        reply = httpx.post(base_url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny_llama", "max_tokens": 8, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "the dog ran to the red barn"}]})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["usage"]["prompt_tokens"] == len(ids)  # the template, BOS included
        assert body["usage"]["completion_tokens"] == 8
        assert body["choices"][0]["message"]["content"].strip() == expected_text.strip()
    finally:
        process.terminate()
        process.wait(timeout=60)
