"""Several LoRA adapters over one base in one serving batch: each row decodes with its own."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from inference_helpers import random_model
from test_serving_engine import Collector, submit

from llmos_jax.compression.adapters import save_adapters
from llmos_jax.compression.lora import LoraConfig, apply_lora, merge_lora
from llmos_jax.errors import UserError
from llmos_jax.inference import DecodeConfig, DecodingEngine
from llmos_jax.inference.decoding_model import with_unstacked_layers
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.lora_source import parse_adapter_flags, with_adapters
from llmos_jax.serving.requests import InvalidSetting

CONFIG = TransformerConfig(vocab_size=61, num_layers=2, embed_dim=32, num_heads=2, max_len=48,
                           scan_layers=True)
TOKENS = 8
PROMPTS = [np.random.default_rng(i).integers(3, 61, size=n).tolist()
           for i, n in enumerate((5, 19, 9, 12, 3, 7))]


def _copy(model):
    """A copy with its own variables (`merge_lora` sets kernels in place)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda a: jax.numpy.array(a, copy=True),
                                            nnx.to_pure_dict(state)))


def _trained_adapter(base, lora: LoraConfig, seed: int, *, stacked: bool):
    """`base` with adapters whose B is random (so they change the output), as a model."""
    model = _copy(base) if stacked else with_unstacked_layers(_copy(base))
    apply_lora(model, lora)
    rng = np.random.default_rng(seed)
    for _, node in nnx.iter_graph(model):
        if hasattr(node, "lora_b"):
            node.lora_b.set_value(jax.numpy.asarray(
                rng.normal(0, 0.5, node.lora_b.shape), node.lora_b.dtype))
    return model


_ENGINES = {}


def _greedy(model, prompt):
    """`generate`'s greedy tokens for `prompt` alone (one compiled engine per model)."""
    engine = _ENGINES.setdefault(id(model), DecodingEngine(model))
    return list(engine.generate([prompt], DecodeConfig(max_new_tokens=TOKENS))[0].tokens)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = random_model(lambda rngs: DecoderLM(CONFIG, rngs=rngs), seed=5, std=0.3)
    folders, merged = {}, {}
    # x: attention only, rank 4, from a per-layer model; y: MLP only, rank 2, saved from a
    # scanned stack ([layers, ...] tensors).
    for name, lora, stacked in (
            ("x", LoraConfig(rank=4, alpha=8.0, target_patterns=[r"attn/(query|value)$"]), False),
            ("y", LoraConfig(rank=2, alpha=8.0, target_patterns=[r"mlp/wo$"]), True)):
        model = _trained_adapter(base, lora, seed=len(folders), stacked=stacked)
        folders[name] = tmp_path_factory.mktemp(name)
        save_adapters(folders[name], nnx.to_pure_dict(nnx.state(model, nnx.Param)), lora)
        merge_lora(model)
        merged[name] = model
    engine = ServingEngine(with_adapters(base, folders), max_slots=4, max_queue=8,
                           prefill_chunk=8)
    engine.start()
    engine.compiled_at_ready = engine.stats().compilations
    yield engine, base, merged, folders
    engine.shutdown()


def test_each_row_decodes_with_its_own_adapter_in_one_batch(served):
    engine, base, merged, _ = served
    assert engine.adapter_ids == {"x": 1, "y": 2}
    picks = [None, "x", "y", "x", None, "y"]
    collector = Collector()
    for i, (prompt, adapter) in enumerate(zip(PROMPTS, picks)):
        submit(engine, collector, f"r{i}", prompt, max_tokens=TOKENS, temperature=0.0,
               adapter=adapter)
    outputs = []
    for i, (prompt, adapter) in enumerate(zip(PROMPTS, picks)):
        collector.finish(f"r{i}")
        got = collector.tokens(f"r{i}")
        assert got == _greedy(base if adapter is None else merged[adapter], prompt), (i, adapter)
        outputs.append(got)
    # The adapters really change the output (else the test could not fail).
    assert _greedy(base, PROMPTS[1]) != outputs[1]
    assert (_greedy(base, PROMPTS[2]), _greedy(base, PROMPTS[5])) != (outputs[2], outputs[5])
    assert engine.stats().compilations == engine.compiled_at_ready


def test_unknown_adapter_and_adapter_for_another_base_are_refused(served, tmp_path):
    engine, base, _, folders = served
    with pytest.raises(InvalidSetting, match="no adapter named 'z'.*'x', 'y'"):
        submit(engine, Collector(), "bad", [5, 6], adapter="z")
    other = random_model(lambda rngs: DecoderLM(dataclasses.replace(CONFIG, embed_dim=16),
                                                 rngs=rngs), seed=1)
    with pytest.raises(UserError, match=r"'layers/0/attn/query/lora_a' has shape \(16, 4\)"):
        with_adapters(_copy(base), {"x": _save(other, tmp_path)})
    with pytest.raises(UserError, match="holds no adapters"):
        with_adapters(_copy(base), {"x": tmp_path / "empty"})
    with pytest.raises(UserError, match=r"also trains base weights in full.*\['final_norm/"
                                        r".*serve that run's merged model_dir/export"):
        with_adapters(_copy(base), {"x": _save(_copy(base), tmp_path / "with_norm",
                                               also_train=[r"^final_norm/"])})
    with pytest.raises(UserError, match="given twice"):
        parse_adapter_flags(["a=p", "a=q"])
    assert parse_adapter_flags(["a=p", "b=q/r"]) == {"a": "p", "b": "q/r"}


def _save(model, folder, also_train=()):
    lora = LoraConfig(rank=4, target_patterns=[r"attn/query$"], also_train=also_train)
    model = with_unstacked_layers(model)
    apply_lora(model, lora)
    save_adapters(folder, nnx.to_pure_dict(nnx.state(model, nnx.Param)), lora)
    return folder


def test_the_openai_model_field_picks_the_adapter(served):
    from fastapi.testclient import TestClient
    from serving_api_helpers import byte_tokenizer

    from llmos_jax.serving.api import create_app
    from llmos_jax.serving.served_model import ServedModel

    engine, base, merged, folders = served
    tokenizer = byte_tokenizer()
    app = create_app(engine, ServedModel(name="base", model=base, tokenizer=tokenizer,
                                         max_context=CONFIG.max_len,
                                         adapters={n: str(f) for n, f in folders.items()}))
    with TestClient(app) as client:
        listed = client.get("/v1/models").json()["data"]
        assert [(m["id"], m.get("parent")) for m in listed] == [
            ("base", None), ("x", "base"), ("y", "base")]
        for model, reference in (("x", merged["x"]), ("base", base)):
            answer = client.post("/v1/completions", json={
                "model": model, "prompt": PROMPTS[3], "max_tokens": TOKENS,
                "temperature": 0}).json()
            assert answer["model"] == model
            assert answer["choices"][0]["text"] == tokenizer.decode(_greedy(reference,
                                                                            PROMPTS[3]))
        refused = client.post("/v1/completions", json={"model": "z", "prompt": [5]})
        assert refused.status_code == 400 and "'base', 'x', 'y'" in refused.text


def test_adapters_over_int8_weights(served):
    from llmos_jax.compression.int8 import Int8Dense
    from llmos_jax.compression.multi_lora import MultiLoraDense, select_adapters
    from llmos_jax.serving.model_source import quantized_for_serving

    _, base, merged, folders = served
    plain = quantized_for_serving(_copy(base), "int8")
    model = with_adapters(quantized_for_serving(_copy(base), "int8"), folders)
    wrapped = [node for _, node in nnx.iter_graph(model) if isinstance(node, MultiLoraDense)]
    assert wrapped and all(isinstance(node.base, Int8Dense) for node in wrapped)
    tokens = jax.numpy.asarray([PROMPTS[1], PROMPTS[1]])

    graphdef, params = nnx.split(model)

    @jax.jit
    def logits(ids):
        traced = nnx.merge(graphdef, params)
        select_adapters(traced, ids)
        return traced(tokens)

    both = np.asarray(logits(np.array([0, 1], np.int32)))
    np.testing.assert_allclose(both[0], np.asarray(plain(tokens))[0], atol=1e-5)
    # Row 1 is adapter x over the int8 base: near x merged in float (int8 error apart).
    reference = np.asarray(merged["x"](tokens))[1]
    assert np.abs(both[1] - reference).max() < 0.05 * np.abs(reference).max()
    assert np.abs(both[1] - both[0]).max() > 0.1 * np.abs(reference).max()
