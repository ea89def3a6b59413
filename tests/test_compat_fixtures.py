"""Runs written by the pre-refactor code still load, decode, evaluate and resume the same.

tests/fixtures/compat holds three tiny runs that `llmos train` wrote at commit
f6f8a87, before issue 12's refactor, left as it wrote them (config.gin,
checkpoints/<step> with optimizer state and metadata, export/, metrics):
a GPT (scanned layers), a Llama-style decoder (unscanned layers, RoPE,
SwiGLU, grouped KV heads) and a T5. `expected.json` holds what the old code's
`llmos infer`, `llmos eval` and a one-step resume produced from them (see
tests/fixtures/compat/make_fixtures.py, which says how it was run).

Each test copies a run to tmp_path and uses it the way a user does: the
run's own config.gin and `--checkpoint` pointing at the run folder or its
export. The copy is the point, not only hygiene: `llmos eval` and a resume
write into the run folder, and a copied folder is a moved folder, so these
tests also check that nothing in a saved run pins its old location (the
saved config.gin binds no MODEL_DIR or data path; `--checkpoint` gives the
model_dir). The data directory (`../shared/data` or `$LLMOS_DATA_DIR`) must
hold tinyshakespeare and multi30k: the character vocabulary is rebuilt from
the corpus, and the tasks are registered by name.

Greedy tokens and texts must be identical; scores and losses equal up to
float32 reordering.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import gin
import pytest

from llmos_jax.cli.main import main

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "compat"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
RUNS = EXPECTED["runs"]


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def copy_run(tmp_path, shared_data_dir, monkeypatch):
    """`copy_run(name)`: the fixture run copied (moved) under tmp_path, data dir set."""
    monkeypatch.setenv("LLMOS_DATA_DIR", str(shared_data_dir))

    def copy(name: str) -> pathlib.Path:
        return pathlib.Path(shutil.copytree(FIXTURES / name, tmp_path / "moved" / name))

    return copy


def llmos(*argv: str) -> None:
    code = main(list(argv))
    gin.clear_config()
    assert code == 0, f"llmos {' '.join(argv)} exited with {code}"


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_fixtures_are_what_the_old_code_wrote():
    """The fixture is the pre-refactor code's output; regenerating it with new code defeats it."""
    assert EXPECTED["commit"].startswith("f6f8a87")
    assert sorted(RUNS) == ["gpt", "llama", "t5"]
    for name in RUNS:
        run = FIXTURES / name
        assert (run / "config.gin").is_file() and (run / "export" / "meta.json").is_file()
        assert [p.name for p in (run / "checkpoints").iterdir()] == [str(RUNS[name]["step"])]
        # Nothing in the saved config pins the folder the run was written in.
        assert "MODEL_DIR" not in (run / "config.gin").read_text()


@pytest.mark.parametrize("source", ["checkpoint", "export"])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_old_run_decodes_the_same_tokens(name, source, copy_run, tmp_path):
    run, expected = copy_run(name), RUNS[name]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in expected["prompts"]))
    output = tmp_path / "out.jsonl"
    checkpoint = run if source == "checkpoint" else run / "export"
    llmos("infer", f"--gin_file={run / 'config.gin'}", f"--checkpoint={checkpoint}",
          f"--input={prompts}", f"--output={output}",
          f"--gin.DecodeConfig.max_new_tokens={EXPECTED['max_new_tokens']}")
    records, old = read_jsonl(output), expected["infer"][source]
    assert [r["id"] for r in records] == [r["id"] for r in old]
    for record, before in zip(records, old):
        (completion,), (completion_before,) = record["completions"], before["completions"]
        assert completion["tokens"] == completion_before["tokens"], record["id"]
        assert completion["text"] == completion_before["text"]
        assert completion["finish_reason"] == completion_before["finish_reason"]
        assert completion["score"] == pytest.approx(completion_before["score"], abs=1e-4)
    assert len(records[0]["completions"][0]["tokens"]) > 0


def test_old_t5_run_evaluates_the_same(copy_run, tmp_path):
    run, expected = copy_run("t5"), RUNS["t5"]
    output_dir = tmp_path / "eval"
    llmos("eval", f"--gin_file={run / 'config.gin'}", f"--checkpoint={run}",
          f"--output_dir={output_dir}", f"--max_examples={EXPECTED['eval_examples']}",
          f"--gin.DecodeConfig.max_new_tokens={EXPECTED['max_new_tokens']}")
    [results] = (output_dir / "eval_results").glob("validation_step*.json")
    [outputs] = (output_dir / "eval_results").glob("validation_step*.jsonl")
    results, before = json.loads(results.read_text()), expected["eval"]
    assert results["step"] == before["step"] == expected["step"]
    assert results["num_examples"] == before["num_examples"]
    assert results["results"].keys() == before["results"].keys()
    for task, metrics in before["results"].items():
        assert results["results"][task] == pytest.approx(metrics, abs=1e-4)
    assert read_jsonl(outputs) == expected["eval_outputs"]


def test_old_gpt_run_resumes_to_the_same_loss(copy_run):
    """`llmos train` on the moved run restores the old optimizer state and data position."""
    run, expected = copy_run("gpt"), RUNS["gpt"]["resume"]
    llmos("train", f"--gin_file={run / 'config.gin'}", f"--model_dir={run}",
          f"--gin.train.num_steps={expected['step']}", "--gin.train.eval_every=0",
          "--gin.train.export=False")
    train = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train][-2:] == [expected["step"] - 1, expected["step"]]
    assert train[-1]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
