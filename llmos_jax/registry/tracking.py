"""The training hook that logs a run to MLflow without ever holding training up.

`MlflowTracking` is a `TrainHook` that `llmos train` installs (with
`--track` or `train.track = True`; `train.register_as = 'NAME'` implies it).
Its `on_step` only wakes a sender thread: that thread tails
`model_dir/metrics.jsonl` (the run's own durable record) and sends every
scalar with its step in batches of at most `batch_size`, so what waits to be
sent is bounded in memory and kept on disk. When the store is unreachable
or fails, training goes on, one warning says so, and the thread retries
with backoff; what it had not sent goes when the store answers again (and,
if the process ends first, when the run resumes: the number of lines sent
and the MLflow run id are kept in `model_dir/mlflow_run.json`, so a resumed
run continues the same MLflow run).

At the end the hook waits at most `final_wait_seconds` for the sender, then
logs `config.gin`, the eval results and the preview samples as artifacts and
registers the export when asked. If the store is down then, it says what to
run later instead of waiting.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from llmos_jax.monitoring.metrics_history import SUPERSEDED_KEY
from llmos_jax.monitoring.metrics_writer import METRICS_FILENAME, TEXT_SPLIT
from llmos_jax.registry.store import Store
from llmos_jax.registry.versions import RUN_ID_FILE, register_export
from llmos_jax.training.hooks import Schedule, StepContext

log = logging.getLogger("llmos_jax.registry")

_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a parameter's value
_PARAMS_PER_CALL = 100
_MAX_BACKOFF_SECONDS = 30.0


def gin_params(config_text: str) -> dict[str, str]:
    """`selector.param` -> value for every binding of a gin config (multi-line values joined)."""
    params: dict[str, str] = {}
    key = None
    for line in config_text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "import ", "include ", "from ")):
            continue
        if " = " in line and not line.startswith((" ", "\t")):
            key, _, value = line.partition(" = ")
            key = key.strip()
            params[key] = value.strip()
        elif key is not None:
            params[key] += " " + line.strip()
    return {k: v[:_PARAM_VALUE_LIMIT] for k, v in params.items() if k}


class MlflowTracking:
    """Logs a training run to MLflow from a background thread (see the module docstring).

    Args:
      open_store: Opens the store (called on the sender thread).
      model_dir: The run's folder.
      params: Parameters of a new run (the gin config, by `gin_params`).
      tags: Tags of the run (code version, mesh, devices, data task).
      register_as: Register the export as a new version of this model at the end.
      run_name: The MLflow run's name.
      poll_seconds: How often the sender looks for new metrics when not woken.
      batch_size: Most metrics per request (and in memory).
      final_wait_seconds: How long the end of training waits for the sender.
    """

    def __init__(self, open_store: Callable[[], Store], model_dir: str | pathlib.Path, *,
                 params: Mapping[str, str] = {}, tags: Mapping[str, str] = {},
                 register_as: str | None = None, run_name: str | None = None,
                 poll_seconds: float = 2.0, batch_size: int = 1000,
                 final_wait_seconds: float = 15.0):
        self.schedule = Schedule(every=1, at_last=True, on_stop=True)
        self._open_store, self._model_dir = open_store, pathlib.Path(model_dir)
        self._params, self._tags = dict(params), dict(tags)
        self.register_as, self._run_name = register_as, run_name or self._model_dir.name
        self._poll, self._batch_size, self._final_wait = poll_seconds, batch_size, final_wait_seconds
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self.store: Store | None = None
        self.run_id: str | None = None
        self.sent_lines = 0
        self.failing = False  # The last attempt to reach the store failed.
        self.outages = 0  # Times the store became unreachable.

    # -- TrainHook ----------------------------------------------------------------------

    def on_step(self, context: StepContext) -> None:
        if not _is_chief():
            return
        if self._thread is None:
            self._start()
        self._wake.set()

    def on_end(self, context: StepContext) -> None:
        if not _is_chief():
            return
        if self._thread is None:
            self._start()
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._final_wait)
        if not (self.failing or self.run_id is None or self._thread.is_alive()):
            try:  # Lines written after the sender's last pass.
                while self._send_some():
                    pass
            except Exception as error:
                self._mark_unreachable(error)
        if self.failing or self.run_id is None or self._thread.is_alive():
            log.warning("MLflow was unreachable at the end of training: %d line(s) of %s and the "
                        "artifacts were not sent (they are kept in %s and go when this run "
                        "resumes)%s", self._unsent(), METRICS_FILENAME, self._model_dir,
                        f"; register later with: llmos models register --model_dir="
                        f"{self._model_dir} --name={self.register_as}" if self.register_as
                        else "")
            return
        self._finish(context)

    # -- the sender ---------------------------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmos-mlflow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                if self.run_id is None:
                    self._connect()
                while self._send_some():
                    pass
                self._mark_reachable()
                backoff = 1.0
            except Exception as error:  # The store is down or refused: training goes on.
                self._mark_unreachable(error)
                self._wake.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
                self._wake.clear()
                if self._stop.is_set():
                    return
                continue
            if self._stop.is_set():
                return
            self._wake.wait(self._poll)
            self._wake.clear()

    def _mark_unreachable(self, error: Exception) -> None:
        if not self.failing:
            self.outages += 1
            log.warning("MLflow store %s is unreachable (%s: %s); training continues, metrics "
                        "are kept in %s and sent when it answers", self._where(),
                        type(error).__name__, str(error).splitlines()[0][:200] if str(error)
                        else "", METRICS_FILENAME)
        self.failing = True

    def _mark_reachable(self) -> None:
        if self.failing:
            log.info("MLflow store %s answers again; sent what was kept", self._where())
        self.failing = False

    def _where(self) -> str:
        return self.store.tracking_uri if self.store is not None else "(not opened)"

    def _connect(self) -> None:
        """Opens the store and continues the run recorded in model_dir, or starts one."""
        from mlflow.exceptions import MlflowException

        if self.store is None:
            self.store = self._open_store()
        state = self._read_state()
        client = self.store.client
        if state.get("run_id") and state.get("tracking_uri") == self.store.tracking_uri:
            try:
                client.get_run(state["run_id"])
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            else:
                client.update_run(state["run_id"], status="RUNNING")
                self.run_id, self.sent_lines = state["run_id"], int(state.get("sent_lines", 0))
                log.info("continuing MLflow run %s in %s", self.run_id, self.store.tracking_uri)
                return
        run = client.create_run(self.store.experiment_id, run_name=self._run_name,
                                tags=self._tags)
        from mlflow.entities import Param

        items = [Param(key[:250], value) for key, value in sorted(self._params.items())]
        for start in range(0, len(items), _PARAMS_PER_CALL):
            client.log_batch(run.info.run_id, params=items[start:start + _PARAMS_PER_CALL])
        self.run_id, self.sent_lines = run.info.run_id, 0
        self._write_state()
        log.info("tracking this run in MLflow: run %s in %s", self.run_id,
                 self.store.tracking_uri)

    def _send_some(self) -> bool:
        """Sends the next batch of new metrics; returns whether more may be waiting."""
        from mlflow.entities import Metric

        lines = self._new_lines()
        metrics, consumed = [], 0
        for line in lines:
            batch = _metrics_of(line)
            if metrics and len(metrics) + len(batch) > self._batch_size:
                break
            metrics += batch
            consumed += 1
        if not consumed:
            return False
        if metrics:
            self.store.client.log_batch(self.run_id, metrics=[
                Metric(key, value, timestamp, step) for key, value, timestamp, step in metrics])
        self.sent_lines += consumed
        self._write_state()
        return consumed < len(lines)

    def _new_lines(self) -> list[str]:
        path = self._model_dir / METRICS_FILENAME
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as file:
            text = file.read()
        complete = text[:text.rfind("\n") + 1].splitlines()  # A line being written waits.
        return complete[self.sent_lines:]

    def _unsent(self) -> int:
        return len(self._new_lines())

    def _read_state(self) -> dict[str, Any]:
        path = self._model_dir / RUN_ID_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_state(self) -> None:
        path = self._model_dir / RUN_ID_FILE
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps({"run_id": self.run_id,
                                         "tracking_uri": self.store.tracking_uri,
                                         "sent_lines": self.sent_lines}))
        temporary.replace(path)

    # -- the end ------------------------------------------------------------------------

    def _finish(self, context: StepContext) -> None:
        client = self.store.client
        try:
            for name in ("config.gin", "warm_start.json"):
                if (self._model_dir / name).exists():
                    client.log_artifact(self.run_id, str(self._model_dir / name))
            if (self._model_dir / "eval_results").is_dir():
                client.log_artifacts(self.run_id, str(self._model_dir / "eval_results"),
                                     "eval_results")
            samples = _samples(self._model_dir / METRICS_FILENAME)
            if samples:
                client.log_text(self.run_id, samples, "samples.txt")
            client.set_terminated(self.run_id, "FINISHED" if context.finished else "KILLED")
            if self.register_as and context.finished:
                version = register_export(self.store, self.register_as, self._model_dir,
                                          run_id=self.run_id)
                log.info("registered the export as models:/%s/%s", self.register_as,
                         version.version)
        except Exception as error:  # Nothing of the run is lost: it is all in model_dir.
            log.warning("MLflow: could not finish run %s (%s: %s); the run's files are intact "
                        "in %s", self.run_id, type(error).__name__, str(error)[:300],
                        self._model_dir)


def _is_chief() -> bool:
    """Only the first host tracks (the others' metrics.jsonl writers are off too)."""
    import jax

    return jax.process_index() == 0


def _metrics_of(line: str) -> list[tuple[str, float, int, int]]:
    """(key, value, time in ms, step) for each finite scalar of one metrics.jsonl record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return []
    if (not isinstance(record, dict) or record.get(SUPERSEDED_KEY)
            or record.get("split") == TEXT_SPLIT or "step" not in record):
        return []
    split, step = record.get("split", "train"), int(record["step"])
    timestamp = int(float(record.get("time", time.time())) * 1000)
    return [(f"{split}/{key}", float(value), timestamp, step) for key, value in record.items()
            if key not in ("step", "split", "time") and isinstance(value, (int, float))
            and not isinstance(value, bool) and math.isfinite(value)]


def _samples(path: pathlib.Path) -> str:
    """The preview samples (text records of metrics.jsonl), newest run's last."""
    if not path.exists():
        return ""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("split") == TEXT_SPLIT:
            out += [f"step {record.get('step')} {key}:\n{value}\n" for key, value in record.items()
                    if key not in ("step", "split", "time") and isinstance(value, str)]
    return "\n".join(out)
