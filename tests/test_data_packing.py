"""Feature converters (LM, prefix LM, encoder-decoder), packing, truncation reports and
deterministic host-sharded batches on the new data paths."""

import json
import logging
import uuid

import numpy as np
import pytest
import seqio

from llmos_jax.data import providers, registry
from llmos_jax.data.feature_lengths import task_feature_lengths
from llmos_jax.data.lm_batches import LMBatches
from llmos_jax.data.records import JsonlFormat
from llmos_jax.data.sources import FileSource, FunctionSource
from llmos_jax.errors import UserError


def _ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]  # ByteVocabulary.


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _lm_task(documents: list[str], chunk: bool = True) -> str:
    source = FunctionSource(lambda split: documents, ("train",))
    return registry.register_lm_task(_unique("lm"), source, seqio.ByteVocabulary(), chunk=chunk)


def _pairs_task(pairs: list[tuple[str, str]]) -> str:
    records = [{"inputs": i, "targets": t} for i, t in pairs]
    source = FunctionSource(lambda split: records, ("train",), features=("inputs", "targets"))
    return registry.register_text_to_text_task(_unique("t2t"), source, seqio.ByteVocabulary())


def _batches(task: str, length, *, pack=True, converter="lm", batch=2, **kwargs) -> LMBatches:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return LMBatches(task, "train", length, batch, pack=pack, feature_converter=converter, **kwargs)


def _stored(batches: LMBatches) -> dict[str, np.ndarray]:
    """All rows in stored order, padding rows dropped."""
    parts = list(batches.eval_batches())
    return {key: np.concatenate([p[key] for p in parts])[: batches.num_examples] for key in parts[0]}


def test_lm_packing_keeps_each_document_in_its_own_segment():
    documents = [letter * n for letter, n in zip("abcdefghij", [3, 2, 4, 1, 5, 2, 6, 1, 3, 2])]
    rows = _stored(_batches(_lm_task(documents), 8))
    targets, inputs = rows["decoder_target_tokens"], rows["decoder_input_tokens"]
    segments, positions = rows["decoder_segment_ids"], rows["decoder_positions"]

    assert len(targets) < len(documents)  # Several documents share rows.
    seen = []
    for r in range(len(targets)):
        for segment in sorted(set(segments[r]) - {0}):
            where = np.flatnonzero(segments[r] == segment)
            assert (np.diff(where) == 1).all()  # Contiguous.
            seen.append(targets[r, where].tolist())
            assert positions[r, where].tolist() == list(range(len(where)))
            # Each token's input is the previous token of the same document, never another's.
            assert inputs[r, where].tolist() == [0] + targets[r, where][:-1].tolist()
        # The attention a model derives (same segment, not later) links one document only.
        allowed = (segments[r][:, None] == segments[r][None, :]) & (segments[r][:, None] > 0)
        letters = np.where(targets[r] > 1, targets[r], -1)
        for i, j in zip(*np.nonzero(np.tril(allowed))):
            assert letters[i] == letters[j] or -1 in (letters[i], letters[j])  # EOS ends a doc.
        assert (rows["decoder_loss_weights"][r] == (segments[r] > 0)).all()
    assert sorted(seen) == sorted(_ids(d) + [1] for d in documents)


def test_prefix_lm_features_exactly():
    task = _pairs_task([("ab", "cde"), ("f", "g")])

    for pack in (False, True):
        rows = _stored(_batches(task, 8, pack=pack, converter="prefix_lm"))
        assert rows["decoder_target_tokens"].tolist() == [
            [100, 101, 1, 102, 103, 104, 1, 0], [105, 1, 106, 1, 0, 0, 0, 0]]
        assert rows["decoder_causal_attention"].tolist() == [
            [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
        # Loss only on the targets part (its EOS included), never on the prefix.
        assert rows["decoder_loss_weights"].tolist() == [
            [0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0, 0]]
    assert rows["decoder_segment_ids"].tolist() == [[1] * 7 + [0], [1] * 4 + [0] * 4]
    assert rows["decoder_positions"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 0], [0, 1, 2, 3, 0, 0, 0, 0]]


def test_enc_dec_packing_aligns_encoder_and_decoder_segments():
    task = _pairs_task([("ab", "c"), ("d", "ef")])

    rows = _stored(_batches(task, {"inputs": 6, "targets": 6}, converter="enc_dec"))

    assert rows["encoder_input_tokens"].tolist() == [_ids("ab") + [1] + _ids("d") + [1, 0]]
    assert rows["encoder_segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0]]
    assert rows["encoder_positions"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert rows["decoder_target_tokens"].tolist() == [_ids("c") + [1] + _ids("ef") + [1, 0]]
    assert rows["decoder_input_tokens"].tolist() == [[0] + _ids("c") + [0] + _ids("ef") + [0]]
    assert rows["decoder_segment_ids"].tolist() == [[1, 1, 2, 2, 2, 0]]
    assert rows["decoder_positions"].tolist() == [[0, 1, 0, 1, 2, 0]]


def test_truncation_is_counted_and_logged(caplog):
    task = _pairs_task([("abcdefgh", "x"), ("ab", "xyzxyz"), ("a", "b")])

    with caplog.at_level(logging.WARNING, logger="llmos_jax.data"):
        batches = _batches(task, {"inputs": 4, "targets": 4}, pack=False, converter="enc_dec")

    report = batches.truncation
    assert (report.examples, report.truncated_examples) == (3, 2)
    assert report.features["inputs"].truncated_examples == 1
    assert report.features["inputs"].truncated_tokens == 9 - 4  # 8 bytes + EOS.
    assert report.features["targets"].truncated_tokens == 7 - 4
    assert report.features["inputs"].total_tokens == 9 + 3 + 2
    assert "cuts 2 of 3 examples" in caplog.text and "inputs: 1 example(s) longer than 4" in caplog.text
    assert _stored(batches)["encoder_input_tokens"][0].tolist() == _ids("abcd")  # Trimmed, no EOS.


def test_chunked_lm_tasks_cut_nothing_unchunked_ones_report_it(caplog):
    long_text = "z" * 40

    assert _batches(_lm_task([long_text]), 16).truncation.truncated_tokens == 0
    with caplog.at_level(logging.WARNING, logger="llmos_jax.data"):
        report = _batches(_lm_task([long_text], chunk=False), 16).truncation
    assert (report.truncated_examples, report.truncated_tokens) == (1, 41 - 16)
    assert "trimming to the sequence length cuts 1 of 1 examples" in caplog.text


def test_bad_converter_settings_are_user_errors():
    task = _lm_task(["abc"])

    with pytest.raises(UserError, match=r"LMBatches\.feature_converter='enc_decc'.*Did you mean "
                                        r"'enc_dec'"):
        _batches(task, 8, converter="enc_decc")
    with pytest.raises(UserError, match=r"lacks \['inputs'\], needed by the 'enc_dec'"):
        task_feature_lengths("enc_dec", {"targets": 8})
    assert task_feature_lengths("prefix_lm", 9) == {"inputs": 4, "targets": 5}
    with pytest.raises(UserError, match="every length must be positive"):
        _batches(task, 0)


@pytest.fixture(scope="module")
def jsonl_pairs_task(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("pairs")
    lines = [json.dumps({"dialogue": f"d{i} " + "x" * (i % 7), "summary": f"s{i}"}) for i in range(40)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    source = FileSource({"train": str(folder / "train.jsonl")},
                        JsonlFormat(fields={"inputs": "dialogue", "targets": "summary"}))
    return registry.register_text_to_text_task(_unique("pairs"), source, seqio.ByteVocabulary())


def test_new_paths_resume_equals_uninterrupted_and_hosts_split_disjointly(jsonl_pairs_task):
    def make(**kwargs):
        return _batches(jsonl_pairs_task, {"inputs": 16, "targets": 8}, converter="enc_dec",
                        batch=4, seed=7, **kwargs)

    whole, resumed = make(), make()
    hosts = [make(process_index=i, process_count=2) for i in range(2)]

    for step in (0, 3, 11):  # Step 11 is past the first epoch.
        expected = whole.global_batch_at(step)
        assert all(np.array_equal(resumed.batch_at(step)[k], v) for k, v in expected.items())
        halves = [host.batch_at(step) for host in hosts]
        for key, value in expected.items():
            assert np.array_equal(np.concatenate([h[key] for h in halves]), value)
        rows = [{r.tobytes() for r in h["encoder_input_tokens"]} for h in halves]
        assert not rows[0] & rows[1]  # Disjoint shards of distinct rows.


def test_mixture_batches_are_deterministic_and_draw_from_each_task():
    a = _lm_task([f"a{i}" for i in range(20)])
    b = _lm_task([f"b{i}" for i in range(20)])
    mixture = providers.register_mixture(_unique("mix"), {a: 1.0, b: 1.0})

    first, second = (_batches(mixture, 8, pack=False, batch=4, seed=1) for _ in range(2))

    assert all(np.array_equal(first.batch_at(5)[k], v) for k, v in second.batch_at(5).items())
    leading = {int(row[0]) for row in _stored(first)["decoder_target_tokens"]}
    assert leading == set(_ids("ab"))


def test_random_windows_are_a_function_of_step_and_slices_of_the_stream(tmp_path):
    """nanoGPT-style sampling: rows are windows of the original text at offsets drawn from (seed, step)."""
    from llmos_jax.data.lm_batches import LMBatches
    from llmos_jax.data.text_tasks import register_text_file_task

    text = "".join(chr(ord("a") + (i * 7) % 26) for i in range(3000))
    path = tmp_path / "stream.txt"
    path.write_text(text)
    task = register_text_file_task(name="random_windows_stream", path=str(path),
                                   validation_fraction=0.1)
    make = lambda **kw: LMBatches(task, "train", 16, 4, seed=5, pack=False,  # noqa: E731
                                  feature_converter="next_token", random_windows=True, **kw)
    batches = make()
    again = make()
    vocab = batches.vocabulary
    stream = np.asarray(vocab.encode(text[:2700]))
    for step in (0, 1, 7):
        batch = batches.batch_at(step)
        np.testing.assert_array_equal(batch["decoder_input_tokens"],
                                      again.batch_at(step)["decoder_input_tokens"])
        np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                      batch["decoder_target_tokens"][:, :-1])
        for row in batch["decoder_input_tokens"]:
            starts = [i for i in range(len(stream) - 16) if np.array_equal(stream[i:i + 16], row)]
            assert starts, "every row is a window of the training text"
    assert not np.array_equal(batches.batch_at(0)["decoder_input_tokens"],
                              batches.batch_at(1)["decoder_input_tokens"])
    hosts = [make(process_index=i, process_count=2).batch_at(3)["decoder_input_tokens"]
             for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(hosts), batches.batch_at(3)["decoder_input_tokens"])
