"""A Hugging Face tokenizer.json as a seqio vocabulary: round trips on English,
Chinese and code, ids as transformers gives them, BOS/EOS from tokenizer_config.json,
a seqio Task's targets, and the export manifest."""

import json

import pytest
import seqio
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmos_jax.data.hf_tokenizer_vocab import HfTokenizerVocabulary
from llmos_jax.data.registry import register_lm_task
from llmos_jax.data.vocabulary_files import (TaskVocabularies, read_vocabularies,
                                             vocabulary_files)
from llmos_jax.errors import UserError

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog, doesn't it?",
    "chinese": "机器学习模型在大规模数据上训练。今天天气很好！",
    "code": "def add(a, b):\n    return {'sum': a + b}  # tabs\tand   spaces\n",
}
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A byte-level BPE trained here on a little of each kind of text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([*TEXTS.values(), "hello world " * 20, "模型 数据 " * 10],
                                  trainer)
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True}))
    return directory


@pytest.mark.parametrize("kind", list(TEXTS))
def test_round_trips_and_ids_match_transformers(folder, kind):
    transformers = pytest.importorskip("transformers")
    vocabulary = HfTokenizerVocabulary(folder)
    text = TEXTS[kind]
    ids = vocabulary.encode(text)
    assert ids[0] == vocabulary.bos_id == 0 and vocabulary.eos_id == 1
    assert vocabulary.decode(ids) == text
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    assert ids[1:] == reference.encode(text, add_special_tokens=False)
    encoded_tf = vocabulary.encode_tf(tf.constant(text)).numpy().tolist()
    assert encoded_tf == ids
    assert vocabulary.decode_tf(tf.constant([ids + [1, 5, 6]])).numpy()[0].decode() == text


def test_special_tokens_in_text_are_single_ids_and_decoding_drops_them(folder):
    vocabulary = HfTokenizerVocabulary(folder, add_bos=False)
    ids = vocabulary.encode("<|im_start|>hello world<|im_end|>")
    assert ids[0] == 2 and ids[-1] == 3 and vocabulary.decode(ids) == "hello world"
    assert vocabulary.vocab_size == 400


def test_seqio_task_targets_end_with_eos(folder):
    vocabulary = HfTokenizerVocabulary(folder)
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
            {"text": list(TEXTS.values())}), splits=["train"])
    name = register_lm_task("hf_tokenizer_test_lm", source, vocabulary, chunk=False)
    try:
        task = seqio.get_mixture_or_task(name)
        rows = list(task.get_dataset({"targets": 256}, split="train", shuffle=False,
                                     use_cached=False).as_numpy_iterator())
        assert len(rows) == len(TEXTS)
        for row, text in zip(rows, TEXTS.values()):
            targets = row["targets"].tolist()
            assert targets[0] == vocabulary.bos_id and targets[-1] == vocabulary.eos_id
            assert vocabulary.decode(targets) == text
    finally:
        seqio.TaskRegistry.remove(name)


def test_export_manifest_round_trip(folder, tmp_path):
    vocabulary = HfTokenizerVocabulary(folder)
    written = vocabulary_files(TaskVocabularies(vocabulary, vocabulary))
    assert written.manifest["outputs"]["kind"] == "hf_tokenizer"
    for relative, contents in written.files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(contents)
    back = read_vocabularies(tmp_path, json.loads(json.dumps(written.manifest)))
    assert back.outputs == vocabulary and back.inputs == vocabulary
    assert back.outputs.encode(TEXTS["chinese"]) == vocabulary.encode(TEXTS["chinese"])


def test_missing_file_and_unknown_eos_are_named(folder, tmp_path):
    with pytest.raises(UserError, match="tokenizer.json does not exist"):
        HfTokenizerVocabulary(tmp_path)
    with pytest.raises(UserError, match="the EOS token '<eos>'"):
        HfTokenizerVocabulary(folder, eos_token="<eos>")


def test_saved_tokenizer_loads_in_auto_tokenizer_with_the_same_ids(folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    vocabulary = HfTokenizerVocabulary(folder)
    vocabulary.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (reloaded.bos_token, reloaded.eos_token) == ("<s>", "</s>")
    back = HfTokenizerVocabulary(tmp_path)
    for text in TEXTS.values():
        assert reloaded.decode(vocabulary.encode(text), skip_special_tokens=True) == text
        # The default call adds BOS (add_bos_token) exactly as our encode does.
        assert reloaded.encode(text) == vocabulary.encode(text) == back.encode(text)
        assert reloaded.encode(text, add_special_tokens=False) == vocabulary.encode(text)[1:]


def test_a_model_export_carries_its_tokenizer_for_transformers(folder, tmp_path):
    """`export_hf_model(..., tokenizer=)`: AutoTokenizer and AutoModelForCausalLM load the one
    folder, with BOS/EOS ids in config.json and the same ids and logits as ours."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from llmos_jax.convert.hf_models import export_hf_model
    from llmos_jax.models import DecoderLM, llama_style_config

    vocabulary = HfTokenizerVocabulary(folder)
    config = llama_style_config(vocab_size=vocabulary.vocab_size, num_layers=1, embed_dim=16,
                                num_heads=2, num_kv_heads=1, mlp_dim=24, max_len=128,
                                scan_layers=False)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    export_hf_model(model, tmp_path, model_type="llama", tokenizer=vocabulary)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (
        vocabulary.tokenizer.token_to_id("<s>"), vocabulary.tokenizer.token_to_id("</s>"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for text in TEXTS.values():
        assert tokenizer(text)["input_ids"] == vocabulary.encode(text)  # BOS first
    ids = tokenizer(TEXTS["code"])["input_ids"]
    with torch.no_grad():
        theirs = reloaded(torch.tensor([ids])).logits.numpy()
    assert np.max(np.abs(np.asarray(model(jnp.asarray([ids]))) - theirs)) < 1e-4
