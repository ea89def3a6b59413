"""The batch inference engine: JSONL requests, resumable chunks, host sharding, bad lines.

Most tests decode with a fake `generate` whose output is a pure function of
(prompt, seed), so they check the engine's bookkeeping exactly and fast; one
runs the real `generate` on a tiny random decoder.
"""

import json

import pytest

from llmos_jax.errors import UserError
from llmos_jax.inference import Completion, DecodeConfig, RequestResult, generate
from llmos_jax.inference import batch_inference as bi


def encode(text):
    return [ord(c) % 50 + 1 for c in text]


class FakeDecode:
    """Records each call's prompts; optionally fails on call number `fail_on` (1-based)."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, token_lists, seeds):
        if self.fail_on is not None and len(self.calls) + 1 == self.fail_on:
            raise KeyboardInterrupt("interrupted")
        self.calls.append([list(t) for t in token_lists])
        return [RequestResult(completions=(Completion(
            tokens=(sum(tokens) % 97, seed), score=-float(len(tokens)), finish_reason="length",
            text=f"{len(tokens)}:{seed}"),)) if len(tokens) < 20 else
            RequestResult(error="too long") for tokens, seed in zip(token_lists, seeds)]


def write_prompts(path, count=11, bad_lines=()):
    lines = []
    for i in range(count):
        lines.append(json.dumps({"prompt": "x" * (i + 1), "id": f"r{i}"}))
    for at, text in bad_lines:
        lines.insert(at, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def run(source, output, decode, **kwargs):
    kwargs.setdefault("chunk_size", 3)
    return bi.run_batch_inference(source, decode, output, encode=encode, base_seed=100,
                                  progress_bar=False, **kwargs)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def source(tmp_path):
    return bi.read_jsonl(write_prompts(tmp_path / "in.jsonl"))


@pytest.fixture
def reference(tmp_path, source):
    output = tmp_path / "reference" / "out.jsonl"
    output.parent.mkdir()
    summary = run(source, output, FakeDecode())
    assert summary.merged and summary.chunks_decoded == 4 and summary.num_chunks == 4
    return read(output)


def test_records_follow_input_order_with_position_seeds(reference):
    assert [r["id"] for r in reference] == [f"r{i}" for i in range(11)]
    first = reference[0]
    assert first["prompt"] == "x" and first["line"] == 1
    assert first["completions"] == [{"text": "1:100", "tokens": [encode("x")[0] % 97, 100],
                                     "score": -1.0, "finish_reason": "length"}]
    assert [r["completions"][0]["tokens"][1] for r in reference] == list(range(100, 111))


def test_per_request_seed_and_errors_from_generate(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ab", "seed": 7}\n\n{"inputs": "' + "y" * 25 + '"}\n')
    output = tmp_path / "out.jsonl"
    summary = run(bi.read_jsonl(path), output, FakeDecode())
    records = read(output)
    assert records[0]["completions"][0]["tokens"][1] == 7  # its own seed
    assert records[1] == {"id": 3, "prompt": "y" * 25, "line": 3, "error": "too long"}
    assert summary.errors == 1


def test_malformed_lines_become_error_records_with_their_line_numbers(tmp_path):
    path = write_prompts(tmp_path / "in.jsonl", count=4, bad_lines=[
        (1, "{not json"), (3, '["a list"]'), (4, '{"text": "no prompt"}'),
        (5, '{"prompt": "p", "seed": -1}'), (6, '{"prompt": 3}')])
    source = bi.read_jsonl(path)
    bad = {r.extra["line"]: r.error for r in source.malformed}
    assert sorted(bad) == [2, 4, 5, 6, 7]
    assert "line 2: not valid JSON" in bad[2]
    assert "line 4: expected a JSON object" in bad[4]
    assert "line 5: needs exactly one of 'prompt' or 'inputs'" in bad[5]
    assert "line 6: 'seed' must be a non-negative integer" in bad[6]
    assert "line 7: 'prompt' must be a string" in bad[7]
    output = tmp_path / "out.jsonl"
    decode = FakeDecode()
    summary = run(source, output, decode)
    records = read(output)
    assert len(records) == 9 and summary.errors == 5
    assert [r["line"] for r in records if "error" in r] == [2, 4, 5, 6, 7]
    assert sum(len(call) for call in decode.calls) == 4  # only the good lines reach generate
    assert [r["id"] for r in records if "completions" in r] == ["r0", "r1", "r2", "r3"]


def test_strict_stops_at_the_first_malformed_line(tmp_path):
    path = write_prompts(tmp_path / "in.jsonl", count=3, bad_lines=[(2, "{oops")])
    with pytest.raises(UserError, match=r"line 3: not valid JSON.*--strict=true"):
        bi.read_jsonl(path, strict=True)


def test_resume_after_an_interruption_skips_finished_chunks(tmp_path, source, reference):
    output = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(source, output, FakeDecode(fail_on=3))
    parts = sorted(p.name for p in (tmp_path / "out.jsonl.parts").glob("chunk-*"))
    assert parts == ["chunk-00000.jsonl", "chunk-00001.jsonl"] and not output.exists()
    resumed = FakeDecode()
    summary = run(source, output, resumed)
    assert summary.chunks_skipped == 2 and summary.chunks_decoded == 2 and summary.merged
    assert [len(call) for call in resumed.calls] == [3, 2]  # chunks 2 and 3 only
    assert read(output) == reference
    assert not (tmp_path / "out.jsonl.parts").exists()


def test_stop_after_chunks_then_rerun_gives_the_same_output(tmp_path, source, reference):
    output = tmp_path / "out.jsonl"
    first = run(source, output, FakeDecode(), stop_after_chunks=1)
    assert first.chunks_decoded == 1 and not first.complete and not output.exists()
    second = run(source, output, FakeDecode(), stop_after_chunks=2)
    third = run(source, output, FakeDecode())
    assert (second.chunks_decoded, third.chunks_decoded, third.chunks_skipped) == (2, 1, 3)
    assert read(output) == reference


def test_two_hosts_cover_every_chunk_exactly_once(tmp_path, source, reference):
    output = tmp_path / "out.jsonl"
    host = {index: FakeDecode() for index in (0, 1)}
    early = run(source, output, FakeDecode(), process_index=0, process_count=2,
                stop_after_chunks=0)
    assert not early.complete
    # Host 0 finishes before host 1 in a run without a barrier: its merge must refuse.
    with pytest.raises(UserError, match=r"chunks \[1, 3\] are not in"):
        run(source, output, host[0], process_index=0, process_count=2)
    second = run(source, output, host[1], process_index=1, process_count=2)
    assert second.complete and not second.merged  # only the chief merges
    waited = []
    chief = run(source, output, FakeDecode(), process_index=0, process_count=2,
                barrier=lambda: waited.append(True))
    assert chief.merged and chief.chunks_decoded == 0 and chief.chunks_skipped == 2 and waited
    decoded = [prompt for index in (0, 1) for call in host[index].calls for prompt in call]
    assert sorted(map(tuple, decoded)) == sorted(tuple(encode("x" * (i + 1))) for i in range(11))
    assert [len(c) for c in host[0].calls] == [3, 3] and [len(c) for c in host[1].calls] == [3, 2]
    assert read(output) == reference


def test_chunking_does_not_change_the_output(tmp_path, source, reference):
    output = tmp_path / "out.jsonl"
    run(source, output, FakeDecode(), chunk_size=5)
    assert read(output) == reference


def test_parts_of_another_run_are_refused(tmp_path, source):
    output = tmp_path / "out.jsonl"
    run(source, output, FakeDecode(), stop_after_chunks=1, manifest={"step": 10})
    with pytest.raises(UserError, match=r"another run \(it differs in step\)"):
        run(source, output, FakeDecode(), manifest={"step": 20})


def test_real_generate_through_chunks_equals_one_generate_call(tmp_path):
    from flax import nnx
    from inference_helpers import random_model

    from llmos_jax.models import DecoderLM, TransformerConfig

    config = TransformerConfig(vocab_size=50, num_layers=1, embed_dim=16, num_heads=2,
                               max_len=16)
    model = random_model(lambda rngs: DecoderLM(config, rngs=rngs))
    prompts = [[3, 4, 5], [7], [1] * 16, [9, 8, 7, 6, 5, 4], [2, 2]]
    decode_config = DecodeConfig(max_new_tokens=4)
    direct = generate(model, None, prompts, decode_config)
    source = bi.RequestSource([bi.Request(id=i, tokens=tuple(p)) for i, p in enumerate(prompts)],
                              {"input": "test"})
    output = tmp_path / "out.jsonl"
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    summary = run(source, output, bi.generate_fn(model, params, decode_config), chunk_size=2)
    records = read(output)
    assert "16 tokens but the cache holds 16 positions" in records[2]["error"]
    assert summary.generated_tokens == 16 and summary.errors == 1
    for record, result in zip(records, direct):
        if result.ok:
            assert record["completions"][0]["tokens"] == list(result.tokens)
            assert record["completions"][0]["score"] == pytest.approx(result.score, abs=1e-5)
        else:
            assert record["error"] == result.error.split(": ", 1)[1]
