"""Model management on the embedded MLflow store (SQLite under LLMOS_HOME), end to end.

One module fixture trains two tiny runs through `llmos train` in this process:
run A with `--track` and `train.register_as` (version 1, then @champion), run B
warm-started from `models:/tiny@champion` on another text (version 2, whose
parent is version 1). The tests read what MLflow recorded and drive
`llmos models`, `llmos eval` and `llmos infer` with `models:/` URIs.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from registry_helpers import cli, flip_byte, train_args, TASK
from tiny_snapshot import write_corpus

from llmos_jax.errors import UserError
from llmos_jax.registry.model_uri import ModelUri
from llmos_jax.registry.store import open_store
from llmos_jax.registry.versions import fetch_version


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    saved = {key: os.environ.get(key) for key in ("LLMOS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["LLMOS_HOME"] = str(root / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    corpus_a, corpus_b = write_corpus(root / "a.txt", seed=0), write_corpus(root / "b.txt", seed=5)
    run_a, run_b = root / "a", root / "b"
    assert cli(*train_args(run_a, corpus_a, "--track", "--gin.train.register_as='tiny'")) == 0
    assert cli("models", "alias", "tiny", "1", "champion") == 0
    assert cli(*train_args(run_b, corpus_b, "--gin.train.init_from='models:/tiny@champion'",
                           "--gin.train.register_as='tiny'", "--gin.train.sample_prompts=[]")) == 0
    yield {"root": root, "a": run_a, "b": run_b, "corpus_a": corpus_a, "corpus_b": corpus_b,
           "store": open_store()}
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def test_embedded_store_lives_under_llmos_home(runs):
    store = runs["store"]
    home = runs["root"] / "home"
    assert store.embedded and store.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert (home / "mlflow.db").is_file() and (home / "mlartifacts").is_dir()
    assert not any(runs["root"].glob("mlruns")) and not os.path.exists("mlruns")


def test_tracked_run_has_config_metrics_tags_and_artifacts(runs):
    client = runs["store"].client
    run_id = json.loads((runs["a"] / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["train.num_steps"] == "6"
    assert run.data.params["register_text_file_task.name"] == repr(TASK)
    assert run.data.tags["llmos.data_task"] == TASK
    assert run.data.tags["llmos.devices"].startswith("8 x ")
    assert "fsdp" in run.data.tags["llmos.mesh"] and run.data.tags["llmos.code_version"]
    written = [json.loads(line) for line in (runs["a"] / "metrics.jsonl").open()]
    train_losses = {r["step"]: r["loss"] for r in written if r["split"] == "train"}
    history = client.get_metric_history(run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(train_losses)
    assert sorted(train_losses) == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(run_id, "eval/loss")] == [6]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.gin", "samples.txt", "registered"} <= artifacts
    assert run.info.status == "FINISHED"


def test_versions_hold_their_own_verified_copy_and_lineage(runs, capsys):
    store = runs["store"]
    first = store.client.get_model_version("tiny", "1")
    second = store.client.get_model_version("tiny", "2")
    assert second.tags["llmos.parent"] == "tiny/1" and "llmos.parent" not in first.tags
    assert first.tags["llmos.data_task"] == TASK
    assert first.tags["llmos.vocab_fingerprint"] == second.tags["llmos.vocab_fingerprint"]
    assert int(first.tags["llmos.num_params"]) == int(second.tags["llmos.num_params"]) > 30000
    assert float(first.tags["eval.heldout.loss"]) > 0
    assert str(runs["a"]) not in first.source  # a copy in the store, not a pointer into the run
    # The run's own export can go: the version is still whole, and verified when fetched.
    for path in sorted((runs["b"] / "export").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    fetched = fetch_version(store, ModelUri("tiny", alias="champion"))
    assert fetched.version == "1" and (fetched.path / "SHA256SUMS.json").is_file()
    assert fetch_version(store, ModelUri("tiny", version="2")).config_gin.is_file()

    assert cli("models", "show", "tiny/2") == 0
    shown = capsys.readouterr().out
    assert "lineage: tiny/2 <- tiny/1" in shown and f"data task: {TASK}" in shown
    assert cli("models", "compare", "tiny", "1", "2") == 0
    compared = capsys.readouterr().out
    assert "parent" in compared and "tiny/1" in compared and "heldout.loss" in compared
    assert cli("models", "list") == 0
    assert "tiny  versions 1..2  @champion -> 1" in capsys.readouterr().out


def test_unknown_names_list_what_exists_and_suggest(runs, capsys):
    assert cli("models", "show", "tiyn@champion") == 2
    err = capsys.readouterr().err
    assert "no registered model 'tiyn'" in err and "Did you mean 'tiny'?" in err
    assert cli("models", "show", "tiny@champoin") == 2
    err = capsys.readouterr().err
    assert "has no alias 'champoin'" in err and "@champion -> 1" in err
    assert cli("models", "show", "tiny/9") == 2
    assert "has no version 9; it has 1, 2" in capsys.readouterr().err
    empty = runs["root"] / "no_export"
    empty.mkdir()
    assert cli("models", "register", f"--model_dir={empty}", "--name=tiny") == 2
    assert "holds no export" in capsys.readouterr().err


def test_eval_and_infer_take_model_uris_and_eval_records_on_the_version(runs, capsys):
    assert cli("eval", "--checkpoint=models:/tiny/2", "--max_examples=8") == 0
    printed = capsys.readouterr().out
    assert "results recorded on models:/tiny/2" in printed
    tags = runs["store"].client.get_model_version("tiny", "2").tags
    perplexity = json.loads(printed[:printed.rindex("}") + 1])["results"][TASK]["perplexity"]
    assert float(tags[f"eval.{TASK}.perplexity"]) == pytest.approx(perplexity)

    prompts, output = runs["root"] / "prompts.jsonl", runs["root"] / "out.jsonl"
    prompts.write_text('{"prompt": "The cat"}\n{"prompt": "A dog"}\n')
    assert cli("infer", "--checkpoint=models:/tiny@champion", f"--input={prompts}",
               f"--output={output}", "--gin.DecodeConfig.max_new_tokens=4") == 0
    lines = [json.loads(line) for line in output.open()]
    assert [line["prompt"] for line in lines] == ["The cat", "A dog"]
    assert all(len(line["completions"][0]["tokens"]) == 4 for line in lines)


def test_damaged_or_missing_artifacts_are_refused(runs):
    store = runs["store"]
    assert cli("models", "register", f"--model_dir={runs['a']}", "--name=tiny") == 0
    third = store.client.get_model_version("tiny", "3")
    flip_byte(third.source)
    with pytest.raises(UserError, match="fail their checksums"):
        fetch_version(store, ModelUri("tiny", version="3"))
    assert not (store.cache_dir / "tiny" / "3" / "export").exists()


def test_promote_moves_the_alias_only_when_the_candidate_wins(runs, capsys):
    store = runs["store"]
    store.client.set_registered_model_alias("tiny", "champion", "1")
    gate = ["models", "promote", "tiny", "--candidate=2", "--alias=champion",
            "--metric=perplexity", f"--task={TASK}", "--lower-is-better", "--max_examples=8",
            f"--gin.register_text_file_task.path={str(runs['corpus_b'])!r}"]
    assert cli(*gate, "--min-delta=1000") == 0
    assert "kept @champion on version 1" in capsys.readouterr().out
    assert str(store.client.get_registered_model("tiny").aliases["champion"]) == "1"
    scores = {v: float(store.client.get_model_version("tiny", v).tags[f"eval.{TASK}.perplexity"])
              for v in ("1", "2")}
    assert cli(*gate, "--min-delta=0") == 0
    out = capsys.readouterr().out
    moved = str(store.client.get_registered_model("tiny").aliases["champion"]) == "2"
    assert moved == (scores["2"] < scores["1"]), (scores, out)
    assert ("moved @champion to version 2" in out) == moved


def test_promote_refuses_when_the_alias_moved_meanwhile(runs):
    from llmos_jax.registry.promotion import promote

    store = runs["store"]
    store.client.set_registered_model_alias("tiny", "staging", "1")

    def evaluate(fetched):  # Someone else promotes while the gate evaluates.
        store.client.set_registered_model_alias("tiny", "staging", "3")
        return {TASK: {"perplexity": 1.0 if fetched.version == "2" else 2.0}}

    with pytest.raises(UserError, match="moved from version 1 to 3"):
        promote(store, "tiny", "2", "staging", metric="perplexity", higher_is_better=False,
                min_delta=0.0, evaluate=evaluate)
    assert str(store.client.get_registered_model("tiny").aliases["staging"]) == "3"


@pytest.mark.slow
def test_concurrent_registrations_both_land(runs):
    import subprocess
    import sys

    from test_e2e_train_cli import subprocess_env

    env = {**subprocess_env(), "LLMOS_HOME": os.environ["LLMOS_HOME"]}
    argv = [sys.executable, "-m", "llmos_jax", "models", "register", f"--model_dir={runs['a']}",
            "--name=concurrent"]
    children = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    versions = runs["store"].client.search_model_versions("name='concurrent'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert len({v.source for v in versions}) == 2


def test_serve_follows_the_alias_under_load_and_keeps_serving_past_a_broken_version(runs):
    import threading

    import httpx

    from llmos_jax.cli.flags import parse_flags
    from llmos_jax.cli.serve_command import _registered, serve_command
    from llmos_jax.serving.model_source import load_served_model
    from llmos_jax.serving.server import EngineOptions, background_server

    client = runs["store"].client
    client.set_registered_model_alias("tiny", "live", "1")
    uri = "models:/tiny@live"
    flags = parse_flags(serve_command(), [f"--model={uri}", "--follow-alias",
                                          "--poll-interval=0.2"])
    served, version, follow = _registered(
        uri, flags, lambda path, name: load_served_model(path, name=name))
    body = {"model": "tiny", "prompt": "The cat", "max_tokens": 4, "temperature": 0,
            "logprobs": 1}
    results, stop = [], threading.Event()

    def client_loop(base_url):
        with httpx.Client(base_url=base_url, timeout=120) as http:
            while not stop.is_set():
                try:
                    response = http.post("/v1/completions", json=body)
                except httpx.HTTPError as error:
                    results.append((-1, repr(error)))
                    continue
                results.append((response.status_code, response.json()["choices"][0]["logprobs"]
                                ["token_logprobs"] if response.status_code == 200
                                else response.text))

    def wait_for(condition, what, timeout=240):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    with background_server(served, engine_options=EngineOptions(max_slots=2), version=version,
                           follow=follow) as server:
        http = httpx.Client(base_url=server.base_url, timeout=120)
        assert http.get("/v1/models").json()["data"][0]["version"] == "1"
        workers = [threading.Thread(target=client_loop, args=(server.base_url,))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        wait_for(lambda: len(results) >= 4, "answers from version 1")
        client.set_registered_model_alias("tiny", "live", "2")  # deploy
        wait_for(lambda: http.get("/v1/models").json()["data"][0]["version"] == "2", "switch")
        switched = len(results)
        wait_for(lambda: len(results) >= switched + 6, "answers from version 2")

        assert cli("models", "register", f"--model_dir={runs['a']}", "--name=tiny") == 0
        broken = max(int(v.version) for v in client.search_model_versions("name='tiny'"))
        flip_byte(client.get_model_version("tiny", str(broken)).source)
        client.set_registered_model_alias("tiny", "live", str(broken))  # a bad deploy
        wait_for(lambda: 'llmos_model_switch_failures_total{model_name="tiny"} 1.0'
                 in http.get("/metrics").text, "the failed switch")
        after_failure = len(results)
        wait_for(lambda: len(results) >= after_failure + 4, "answers after the failed switch")
        assert http.get("/v1/models").json()["data"][0]["version"] == "2"
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
        metrics = http.get("/metrics").text
    assert [status for status, _ in results] == [200] * len(results), results
    first, later = results[0][1], [answer for _, answer in results[switched + 2:]]
    assert all(answer == pytest.approx(later[0], abs=1e-4) for answer in later)  # version 2
    assert max(abs(a - b) for a, b in zip(later[0], first)) > 1e-3  # which is not version 1
    assert 'llmos_model_switches_total{model_name="tiny"} 1.0' in metrics


def test_the_registry_reads_the_export_layout_checkpoints_writes():
    from llmos_jax.checkpoints import exports
    from llmos_jax.registry import versions

    assert (versions.PARAMS_DIRNAME, versions.META_FILENAME) == (exports.PARAMS_DIRNAME,
                                                                 exports.META_FILENAME)
