"""Character-level corpora read with numpy alone: ``LMBatches.pipeline = 'numpy'``.

seqio runs on TensorFlow, whose import alone costs a training process
seconds and about 1 GB of memory (the Shakespeare job peaked at 1.8 GB with
it, 0.75 GB without). For a character-level corpus that is
all overhead: the split is one string, tokenizing it is a table lookup, and
``LMBatches`` only needs the resulting arrays. This module builds exactly the
arrays the seqio Task builds (same split, same vocabulary, same windows), so
batches are the same step for step whichever pipeline made them; a run may
switch pipelines on resume.

Only the built-in ``tiny_shakespeare_char`` Task has a numpy reader today, and
only with the ``next_token`` feature converter (nanoGPT's rows); other tasks
and converters use seqio (``LMBatches.pipeline = 'seqio'``, the default).
"""

from __future__ import annotations

from collections.abc import Mapping

import gin
import numpy as np

from llmos_jax.data.data_dir import resolve_data_path
from llmos_jax.data.split_snapshot import SplitArrays
from llmos_jax.data.truncation import FeatureTruncation, TruncationReport
from llmos_jax.data.vocabulary_tables import EOS_ID, CharacterTable, characters_of
from llmos_jax.errors import UserError

SHAKESPEARE = "tiny_shakespeare_char"
SPLITS = ("train", "validation")


def nanogpt_char_split(text: str, train_fraction: float) -> dict[str, str]:
    """nanoGPT's ``shakespeare_char`` split: the first ``int(n * fraction)`` characters train."""
    cut = int(len(text) * train_fraction)
    return {"train": text[:cut], "validation": text[cut:]}


@gin.configurable
class CharCorpus:
    """``tiny_shakespeare_char``'s text and vocabulary for the numpy pipeline.

    The same settings as ``register_tiny_shakespeare_char`` (which the seqio
    pipeline reads); bind these (``CharCorpus.path``, ...) when training with
    ``LMBatches.pipeline = 'numpy'``.

    Args:
      path: the text file, relative to the data directory.
      train_fraction: the leading share of characters used for training.
      vocab_json: a character vocabulary file (relative to the cwd) to use
        instead of the file's own characters.
    """

    def __init__(self, path: str = "tinyshakespeare/input.txt", train_fraction: float = 0.9,
                 vocab_json: str | None = None):
        if not 0.0 < train_fraction < 1.0:
            raise UserError(f"CharCorpus.train_fraction={train_fraction} must be in (0, 1).")
        self._file = resolve_data_path(path, "CharCorpus.path")
        self._train_fraction = train_fraction
        self._vocab_json = vocab_json
        self._text: str | None = None

    def _read(self) -> str:
        if self._text is None:
            self._text = self._file.read_text(encoding="utf-8")
        return self._text

    def table(self) -> CharacterTable:
        """The vocabulary: the file's own characters, or ``vocab_json``'s."""
        if self._vocab_json:
            try:
                text = open(self._vocab_json, encoding="utf-8").read()
            except OSError as error:
                raise UserError(f"CharCorpus.vocab_json={self._vocab_json!r} cannot be read "
                                f"({error.strerror}); fix the path.") from None
            return CharacterTable.from_json(text, source=self._vocab_json)
        return CharacterTable(characters_of([self._read()]))

    def tokens(self, split: str, table: CharacterTable) -> np.ndarray:
        """The split as one document: its character ids, then EOS (seqio's ``append_eos``)."""
        if split not in SPLITS:
            raise UserError(f"task {SHAKESPEARE!r} has no split {split!r}; use one of "
                            f"{list(SPLITS)} (gin: LMBatches.split / train.eval_split).")
        text = nanogpt_char_split(self._read(), self._train_fraction)[split]
        return np.asarray([*table.encode(text), EOS_ID], dtype=np.int32)


def next_token_windows(tokens: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """The ``next_token`` rows of one document: consecutive windows of ``window`` tokens.

    As ``preprocessors.chunk_tokens`` then ``NextTokenFeatureConverter`` (no
    packing): the last window holds the remainder, padded with id 0; each
    window w gives inputs w[:-1], targets w[1:] and loss weight (target != 0).
    """
    rows = -(-len(tokens) // window)
    padded = np.zeros(rows * window, dtype=np.int32)
    padded[:len(tokens)] = tokens
    windows = padded.reshape(rows, window)
    # A remainder of one token gives a window with no target at all: seqio's
    # converter still emits that row (all weights zero), and so do we.
    targets = windows[:, 1:]
    return {"decoder_input_tokens": windows[:, :-1], "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets != 0).astype(np.float32)}


def materialise_with_numpy(task_name: str, split: str, lengths: Mapping[str, int],
                           feature_converter: str, pack: bool,
                           max_examples: int | None = None) -> tuple[SplitArrays, CharacterTable]:
    """The split's arrays and vocabulary, as the seqio pipeline makes them, without TensorFlow.

    Raises:
      UserError: a task, converter or packing setting the numpy pipeline does
        not cover, naming the seqio setting to use instead.
    """
    fallback = "or set LMBatches.pipeline = 'seqio'"
    if task_name != SHAKESPEARE:
        raise UserError(f"LMBatches.pipeline='numpy' reads only {SHAKESPEARE!r}, not "
                        f"{task_name!r}; {fallback}.")
    if feature_converter != "next_token" or pack:
        raise UserError("LMBatches.pipeline='numpy' makes unpacked 'next_token' rows only (got "
                        f"feature_converter={feature_converter!r}, pack={pack}); set "
                        f"LMBatches.feature_converter='next_token' and train.pack=False, "
                        f"{fallback}.")
    corpus = CharCorpus()
    table = corpus.table()
    tokens = corpus.tokens(split, table)
    arrays = next_token_windows(tokens, lengths["targets"])
    if max_examples is not None:
        arrays = {key: value[:max_examples] for key, value in arrays.items()}
    rows = len(arrays["decoder_input_tokens"])
    # Chunking cuts documents instead of trimming them: nothing is lost.
    report = TruncationReport(examples=rows, truncated_examples=0, features={
        "targets": FeatureTruncation(lengths["targets"], 0, 0, int(len(tokens)))})
    return SplitArrays(arrays, report), table
