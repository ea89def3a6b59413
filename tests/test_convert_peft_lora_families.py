"""Llama, BERT and T5 LoRA adapters move both ways between us and Hugging Face PEFT.

Each case is a tiny random transformers model: our adapters, written as PEFT
files, give PEFT the logits our adapted model gives, and adapters PEFT made
give ours PEFT's logits. An adapter for another base names the tensor.
"""

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from llmos_jax.compression.adapters import replace_adapters  # noqa: E402
from llmos_jax.compression.lora import LoraConfig, apply_lora  # noqa: E402
from llmos_jax.compression.multi_lora import select_adapters  # noqa: E402
from llmos_jax.convert import bert, llama, t5  # noqa: E402
from llmos_jax.convert.peft_lora import read_peft_adapters, write_peft_adapters  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402
from llmos_jax.models import DecoderLM, EncoderForSequenceClassification  # noqa: E402
from llmos_jax.serving.lora_source import with_adapters  # noqa: E402
from test_convert_peft_lora import randomise_lora_b  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOLERANCE = 5e-5  # float32: two libraries' attention sums differ by ~2e-5 on logits ~0.2
VOCAB = 64
TOKENS = np.random.default_rng(0).integers(2, VOCAB, (2, 10))
DECODER_TOKENS = np.random.default_rng(1).integers(2, VOCAB, (2, 7))


@dataclasses.dataclass(frozen=True)
class Case:
    """A saved transformers base, how to load it on both sides, and its PEFT targets."""

    directory: os.PathLike  # the transformers model, saved
    hf_class: Callable
    ours: Callable[..., nnx.Module]  # (**overrides) -> our model with the same weights
    hf_logits: Callable
    ours_logits: Callable
    targets: tuple[str, ...]
    # How the writing test builds ours (reading needs per-layer blocks). Writing from a
    # stacked model is covered by test_convert_peft_lora.py (GPT-2): scanned T5 costs 10 s.
    scan_layers: bool


def _llama(directory) -> Case:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return Case(directory, transformers.LlamaForCausalLM,
                lambda **kw: llama.import_llama(directory, **kw),
                lambda m: m(torch.as_tensor(TOKENS)).logits,
                lambda m: m(jnp.asarray(TOKENS)),
                ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                scan_layers=False)


def _bert(directory) -> Case:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=16, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    transformers.BertModel(config).save_pretrained(directory)
    return Case(directory, transformers.BertModel,
                lambda **kw: bert.import_bert(directory, dropout_rate=0.0, **kw),
                lambda m: m(torch.as_tensor(TOKENS)).last_hidden_state,
                lambda m: m(jnp.asarray(TOKENS)),
                ("query", "key", "value", "output.dense", "intermediate.dense"),
                scan_layers=False)


def _bert_classifier(directory) -> Case:
    """``BertForSequenceClassification`` (``bert.`` names) <-> ``EncoderForSequence…``."""
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=16, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf_model = transformers.BertForSequenceClassification(config)
    hf_model.save_pretrained(directory)
    hf_model.bert.save_pretrained(directory / "bert")

    def ours(**overrides):
        encoder = bert.import_bert(directory / "bert", dropout_rate=0.0, **overrides)
        # Built abstract (eager random init costs seconds), then filled: the encoder, the head.
        model = nnx.eval_shape(lambda: EncoderForSequenceClassification(
            encoder.config, 3, rngs=nnx.Rngs(0)))
        model.encoder = encoder
        head = model.classifier.dense
        head.kernel.set_value(jnp.asarray(hf_model.classifier.weight.detach().numpy().T))
        head.bias.set_value(jnp.asarray(hf_model.classifier.bias.detach().numpy()))
        return model

    return Case(directory, transformers.BertForSequenceClassification, ours,
                lambda m: m(torch.as_tensor(TOKENS)).logits,
                lambda m: m(jnp.asarray(TOKENS)),
                ("query", "value", "output.dense"), scan_layers=False)


def _t5(directory) -> Case:
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                   num_decoder_layers=1, num_heads=4, dropout_rate=0.0,
                                   relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20)
    transformers.T5ForConditionalGeneration(config).save_pretrained(directory)
    return Case(directory, transformers.T5ForConditionalGeneration,
                lambda **kw: t5.import_t5(directory, dropout_rate=0.0, **kw),
                lambda m: m(input_ids=torch.as_tensor(TOKENS),
                            decoder_input_ids=torch.as_tensor(DECODER_TOKENS)).logits,
                lambda m: m(jnp.asarray(TOKENS), jnp.asarray(DECODER_TOKENS)),
                ("q", "k", "v", "o", "wi", "wo"), scan_layers=False)


CASES = {"llama": _llama, "bert": _bert, "bert_classifier": _bert_classifier, "t5": _t5}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    torch.manual_seed(0)
    return CASES[request.param](tmp_path_factory.mktemp(request.param))


def hf_base(case: Case):
    return case.hf_class.from_pretrained(case.directory).eval()


def run_hf(case: Case, model) -> np.ndarray:
    with torch.no_grad():
        return case.hf_logits(model).numpy()


def run_ours(case: Case, model) -> np.ndarray:
    return np.asarray(nnx.jit(case.ours_logits)(model))


def test_our_adapters_load_in_peft_with_the_same_logits(case, tmp_path):
    ours = case.ours(scan_layers=case.scan_layers)
    lora = LoraConfig(rank=2, alpha=6.0)
    apply_lora(ours, lora)
    randomise_lora_b(ours)
    write_peft_adapters(tmp_path, nnx.to_pure_dict(nnx.state(ours, nnx.Param)), lora,
                        ours.config)
    base = hf_base(case)
    plain = run_hf(case, base)
    theirs = run_hf(case, peft.PeftModel.from_pretrained(base, tmp_path).eval())
    assert np.abs(theirs - plain).max() > 1e-2  # the adapters do something
    np.testing.assert_allclose(run_ours(case, ours), theirs, atol=TOLERANCE)


def peft_adapter(case: Case, directory) -> np.ndarray:
    """Saves a PEFT-made adapter (random A and B) to `directory`; returns PEFT's logits."""
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(case.targets),
                             init_lora_weights=False, lora_dropout=0.0)
    torch.manual_seed(1)
    adapted = peft.get_peft_model(hf_base(case), config).eval()
    adapted.save_pretrained(directory)
    theirs = run_hf(case, adapted)
    with adapted.disable_adapter():
        assert np.abs(theirs - run_hf(case, adapted)).max() > 1e-2  # the adapter does something
    return theirs


def test_peft_adapters_load_in_ours_with_the_same_logits(case, tmp_path):
    theirs = peft_adapter(case, tmp_path)
    ours = case.ours(scan_layers=False)
    lora, tensors = read_peft_adapters(tmp_path, ours.config)
    apply_lora(ours, lora)
    state = nnx.state(ours, nnx.Param)
    nnx.replace_by_pure_dict(state, replace_adapters(nnx.to_pure_dict(state), tensors,
                                                     str(tmp_path)))
    nnx.update(ours, state)
    np.testing.assert_allclose(run_ours(case, ours), theirs, atol=TOLERANCE)


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_llmos_serve_lora_serves_a_peft_folder_with_peft_logits(name, tmp_path):
    """What ``llmos serve --lora=NAME=PATH`` attaches (`with_adapters`) gives PEFT's logits."""
    torch.manual_seed(0)
    case = CASES[name](tmp_path / "base")
    theirs = peft_adapter(case, tmp_path / "adapter")
    served = with_adapters(case.ours(scan_layers=False), {"tuned": tmp_path / "adapter"})

    def with_adapter(model):
        select_adapters(model, jnp.ones((TOKENS.shape[0],), jnp.int32))  # row id 1: "tuned"
        return case.ours_logits(model)

    np.testing.assert_allclose(np.asarray(nnx.jit(with_adapter)(served)), theirs,
                               atol=TOLERANCE)


def _llama_adapter(directory, **shape):
    """The config of a tiny Llama DecoderLM whose adapters (ones) are written as PEFT files."""
    fields = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4)
    config = llama.config_from_hf({**fields, **shape}, scan_layers=False)
    lora = LoraConfig(rank=2)

    def adapted():
        model = DecoderLM(config, rngs=nnx.Rngs(0))
        apply_lora(model, lora)
        return model

    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(adapted), nnx.Param))  # no init cost
    params = jax.tree.map(lambda leaf: np.ones(leaf.shape, np.float32), abstract)
    write_peft_adapters(directory, params, lora, config)
    return config


def test_an_adapter_for_another_base_names_the_first_tensor_that_does_not_fit(tmp_path):
    small = _llama_adapter(tmp_path / "small")
    wider = _llama_adapter(tmp_path / "wider", **{"intermediate_size": 64})
    with pytest.raises(UserError, match=r"'base_model\.model\.model\.layers\.0\.mlp\.down_proj"
                                        r"\.lora_A\.weight' has shape \(2, 48\).*needs \[r, 64\]"):
        read_peft_adapters(tmp_path / "small", wider)
    deeper = llama.config_from_hf(dict(model_type="llama", vocab_size=VOCAB, hidden_size=32,
                                       intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4))
    with pytest.raises(UserError, match=r"'base_model\.model\.model\.layers\.1\.mlp\.down_proj"
                                        r"\.lora_A\.weight' is not a LoRA weight of this Llama "
                                        r"model's blocks"):
        read_peft_adapters(tmp_path / "small", deeper)
    encoder = bert.config_from_hf(dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=48))
    with pytest.raises(UserError, match=r"'base_model\.model\.model\.layers\.0\..*' is not a "
                                        r"LoRA weight of this BERT model"):
        read_peft_adapters(tmp_path / "small", encoder)
    lora, tensors = read_peft_adapters(tmp_path / "small", small)
    assert len(tensors) == 2 * 7 * 2 and lora.rank == 2
