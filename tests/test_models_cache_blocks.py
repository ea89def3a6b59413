"""Blocked decoding caches: the same writes and the same attention as one contiguous cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.models.attention import _grouped_attention, write_cache
from llmos_jax.models.cache_blocks import CacheBlocks, block_sizes, blocked_attention

ROWS, SLOTS, HEAD_DIM = 3, 40, 8


def test_block_sizes_cover_the_slots():
    assert block_sizes(40, 16) == (16, 16, 8)
    assert block_sizes(64, 16) == (16, 16, 16, 16)
    assert block_sizes(8, 16) == (8,)


def contiguous_and_blocked(kv_heads, seed):
    cache = jax.random.normal(jax.random.key(seed), (ROWS, kv_heads, SLOTS, HEAD_DIM))
    sizes = block_sizes(SLOTS, 16)
    starts = np.cumsum((0,) + sizes[:-1])
    blocks = CacheBlocks(tuple(cache[:, :, s:s + n] for s, n in zip(starts, sizes)))
    return cache, blocks


def joined(blocks: CacheBlocks) -> jax.Array:
    return jnp.concatenate(blocks.blocks, axis=2)


def test_each_row_writes_its_own_slot_whatever_block_it_falls_in():
    cache, blocks = contiguous_and_blocked(2, 0)
    new = jax.random.normal(jax.random.key(1), (ROWS, 2, 1, HEAD_DIM))
    write_index = jnp.asarray([0, 17, 39])  # first block, second block, the short last block
    expected = write_cache(cache, new, write_index)
    written = jax.jit(lambda b, n, i: b.write(n, i))(blocks, new, write_index)
    np.testing.assert_array_equal(np.asarray(joined(written)), np.asarray(expected))
    assert [b.shape[2] for b in written.blocks] == [16, 16, 8]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])  # multi-head and grouped-query
@pytest.mark.parametrize("read_len", [16, 32, 40])
def test_blocked_attention_equals_attention_over_the_contiguous_prefix(heads, kv_heads,
                                                                       read_len):
    keys, key_blocks = contiguous_and_blocked(kv_heads, 2)
    values, value_blocks = contiguous_and_blocked(kv_heads, 3)
    q = jax.random.normal(jax.random.key(4), (ROWS, 1, heads, HEAD_DIM))
    lengths = jnp.asarray([3, read_len - 1, read_len // 2])
    mask = (jnp.arange(read_len)[None, :] <= lengths[:, None])[:, None, None, :]
    ours = blocked_attention(q, key_blocks.prefix(read_len), value_blocks.prefix(read_len),
                             mask)
    grouped = q.reshape(ROWS, 1, kv_heads, heads // kv_heads, HEAD_DIM)
    reference = _grouped_attention(grouped, keys[:, :, :read_len], values[:, :, :read_len],
                                   mask, None, "bksd", 0.0, None)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_a_prefix_must_end_a_block():
    _, blocks = contiguous_and_blocked(2, 0)
    assert blocks.prefix(32).slots == 32 and len(blocks.prefix(32).blocks) == 2
    with pytest.raises(ValueError, match="does not end a cache block"):
        blocks.prefix(20)
