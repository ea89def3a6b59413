"""GPT-2 LoRA adapters move both ways between us and Hugging Face PEFT, with equal logits."""

import os
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from llmos_jax.compression.adapters import replace_adapters  # noqa: E402
from llmos_jax.compression.lora import LoraConfig, LoraDense, apply_lora  # noqa: E402
from llmos_jax.convert import gpt2  # noqa: E402
from llmos_jax.convert.peft_lora import read_peft_adapters, write_peft_adapters  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOKENS = np.random.default_rng(0).integers(0, 100, (2, 12))


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_layer=2, n_embd=32, n_head=4,
                                     n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(directory)
    return directory


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(TOKENS)).logits.numpy()


def ours_logits(model) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m: m(jnp.asarray(TOKENS, jnp.int32)))(model))


def randomise_lora_b(model) -> None:
    """Gives every adapter a non-zero B seeded by its path, so merged adapters change the output.

    Seeding by the path (not the position among graph nodes) keeps the draw when a
    module gains an unrelated attribute.
    """
    for path, node in nnx.iter_graph(model):
        if isinstance(node, LoraDense):
            seed = zlib.crc32("/".join(map(str, path)).encode())
            node.lora_b[...] = 0.3 * np.random.default_rng(seed).normal(
                size=node.lora_b.shape).astype(np.float32)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_our_adapters_load_in_peft_with_the_same_logits(hf_base, tmp_path, scan_layers):
    ours = gpt2.import_gpt2(hf_base, scan_layers=scan_layers)
    lora = LoraConfig(rank=2, alpha=6.0)
    apply_lora(ours, lora)
    randomise_lora_b(ours)
    write_peft_adapters(tmp_path, nnx.to_pure_dict(nnx.state(ours, nnx.Param)), lora,
                        ours.config)
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_base).eval()
    plain = hf_logits(base)
    adapted = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    theirs = hf_logits(adapted)
    assert np.abs(theirs - plain).max() > 1e-2  # the adapters do something
    np.testing.assert_allclose(ours_logits(ours), theirs, atol=1e-4)


def test_peft_adapters_load_in_ours_with_the_same_logits(hf_base, tmp_path):
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_base).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                             fan_in_fan_out=True, init_lora_weights=False, lora_dropout=0.0)
    adapted = peft.get_peft_model(base, config).eval()
    theirs = hf_logits(adapted)
    adapted.save_pretrained(tmp_path)

    ours = gpt2.import_gpt2(hf_base, scan_layers=False)
    lora, tensors = read_peft_adapters(tmp_path, ours.config)
    apply_lora(ours, lora)
    params = replace_adapters(nnx.to_pure_dict(nnx.state(ours, nnx.Param)), tensors,
                              str(tmp_path))
    state = nnx.state(ours, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(ours, state)
    np.testing.assert_allclose(ours_logits(ours), theirs, atol=1e-4)
