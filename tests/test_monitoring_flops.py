"""The MFU FLOPs convention: hand-computed numbers and how each term moves."""

import pytest

from llmos_jax.errors import UserError
from llmos_jax.models.flops import decoder_training_flops_per_token
from llmos_jax.monitoring.flops import mfu

TINY = dict(
    num_layers=2, embed_dim=8, num_heads=2, num_kv_heads=1, head_dim=4,
    mlp_dim=16, vocab_size=10, seq_len=6, gated_mlp=True,
)
GPT2_SMALL = dict(
    num_layers=12, embed_dim=768, num_heads=12, num_kv_heads=12, head_dim=64,
    mlp_dim=3072, vocab_size=50257, seq_len=1024, gated_mlp=False,
)


def test_tiny_config_matches_hand_count():
    # Per layer: q 8*2*4=64, kv 2*8*1*4=64, out 2*4*8=64, gated MLP 3*8*16=384 -> 576.
    # Matmul weights: 2*576 + LM head 8*10 = 1232; 6*1232 = 7392.
    # Attention: 12*L*T*H*Dh = 12*2*6*2*4 = 1152, halved for causal = 576.
    assert decoder_training_flops_per_token(**TINY) == 7392 + 576
    assert decoder_training_flops_per_token(**TINY, causal=False) == 7392 + 1152


def test_gpt2_small_equals_closed_form():
    L, d, T, V, mlp = 12, 768, 1024, 50257, 3072
    n_matmul = L * (4 * d * d + 2 * d * mlp) + d * V
    assert n_matmul == 123_532_032
    expected = 6 * n_matmul + 12 * L * T * d * 0.5
    assert decoder_training_flops_per_token(**GPT2_SMALL) == expected == 797_815_296


def test_causal_removes_exactly_half_the_attention_term():
    full = decoder_training_flops_per_token(**GPT2_SMALL, causal=False)
    causal = decoder_training_flops_per_token(**GPT2_SMALL, causal=True)
    attention = 12 * 12 * 1024 * 12 * 64
    assert full - causal == attention / 2


def test_grouped_query_attention_reduces_only_kv_projection():
    mha = decoder_training_flops_per_token(**{**GPT2_SMALL, "num_kv_heads": 12})
    gqa = decoder_training_flops_per_token(**{**GPT2_SMALL, "num_kv_heads": 4})
    # 6 FLOPs per weight * layers * (k and v) * embed * dropped heads * head_dim.
    assert mha - gqa == 6 * 12 * 2 * 768 * (12 - 4) * 64


def test_gated_mlp_adds_one_matrix_per_layer():
    plain = decoder_training_flops_per_token(**GPT2_SMALL)
    gated = decoder_training_flops_per_token(**{**GPT2_SMALL, "gated_mlp": True})
    assert gated - plain == 12 * (2 * 3 * 768 * 3072)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_non_positive_integer_dimension_is_a_user_error(bad):
    with pytest.raises(UserError, match="num_layers"):
        decoder_training_flops_per_token(**{**TINY, "num_layers": bad})


def test_mfu_value():
    value = mfu(flops_per_token=797_815_296, tokens_per_second=4e5, peak_flops_per_second=989e12)
    assert value == pytest.approx(797_815_296 * 4e5 / 989e12, rel=1e-15)
    assert value == pytest.approx(0.322675, abs=1e-6)


@pytest.mark.parametrize("bad_peak", [0.0, -1e12, float("nan"), float("inf")])
def test_mfu_rejects_non_positive_peak(bad_peak):
    with pytest.raises(UserError, match="peak_flops_per_second"):
        mfu(flops_per_token=1.0, tokens_per_second=1.0, peak_flops_per_second=bad_peak)
