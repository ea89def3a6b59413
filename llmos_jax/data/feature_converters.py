"""The choice of seqio feature converter: how task features become model features.

=============  ===========================  ==========================================
name           task features                model features
=============  ===========================  ==========================================
``lm``         targets                      decoder_* (causal LM)
``prefix_lm``  inputs, targets              decoder_* with a bidirectional prefix
                                            (``decoder_causal_attention``); loss on
                                            targets only
``enc_dec``    inputs, targets              encoder_input_tokens, decoder_*
``next_token`` targets (L + 1 tokens)       decoder_* (causal LM, no BOS): inputs are
                                            tokens 0..L-1, targets tokens 1..L
=============  ===========================  ==========================================

With packing on, several examples share a row and ``*_segment_ids`` /
``*_positions`` say which tokens belong together; a model must attend only
within a segment.

A single ``sequence_length`` L sets the row length of every model feature:
``lm`` trims ``targets`` to L; ``enc_dec`` trims ``inputs`` and ``targets``
to L each; ``prefix_lm`` gives ``inputs`` L // 2 and ``targets`` the rest, so
a decoder row (inputs then targets) is L tokens. A mapping sets the task
feature lengths exactly instead.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from llmos_jax.data.feature_lengths import CONVERTER_NAMES, check_converter_name
from llmos_jax.errors import UserError


class NextTokenFeatureConverter(seqio.FeatureConverter):
    """Causal LM rows where every target has real context, as in nanoGPT.

    seqio's ``lm`` converter shifts targets right behind a BOS id, so the first
    token of every row is predicted from nothing. For text cut into fixed
    windows (character-level Shakespeare) that costs a noticeable slice of the
    loss and makes results incomparable with nanoGPT, whose rows are
    ``x = data[i:i+L]``, ``y = data[i+1:i+L+1]``. This converter reads windows
    of L + 1 tokens and returns exactly that pair. Unpacked only.
    """

    TASK_FEATURES = {"targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {
        "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise UserError("the 'next_token' feature converter does not pack; set "
                            "LMBatches.pack = False (or train.pack = False).")
        super().__init__(pack=False, **kwargs)

    def _convert_features(self, ds, task_feature_lengths):
        ds = self._pack_or_pad(ds, task_feature_lengths)

        def convert(features):
            window = features["targets"]
            targets = window[1:]
            return {"decoder_input_tokens": window[:-1], "decoder_target_tokens": targets,
                    "decoder_loss_weights": tf.cast(tf.not_equal(targets, 0), tf.int32)}

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
        length = task_feature_lengths["targets"] - 1
        return {name: length for name in self.MODEL_FEATURES}


FEATURE_CONVERTERS: dict[str, type[seqio.FeatureConverter]] = {
    "lm": seqio.LMFeatureConverter,
    "prefix_lm": seqio.PrefixLMFeatureConverter,
    "enc_dec": seqio.EncDecFeatureConverter,
    "next_token": NextTokenFeatureConverter,
}
assert tuple(FEATURE_CONVERTERS) == CONVERTER_NAMES


def make_feature_converter(name: str, pack: bool, *,
                           setting: str = "LMBatches.feature_converter") -> seqio.FeatureConverter:
    """The seqio feature converter called ``name``, packing or padding rows.

    Raises:
      UserError: an unknown name, with the closest match.
    """
    check_converter_name(name, setting)
    return FEATURE_CONVERTERS[name](pack=pack)
