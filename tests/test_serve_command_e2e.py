"""`llmos serve` as a user runs it: a real process, a real key, a real SIGTERM.

The served model is a Hugging Face GPT-2 folder (tiny, random weights, 256 positions) so one
request can run for long enough (hundreds of decode steps) to be caught by the signal.
"""

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from serving_api_helpers import hf_gpt2_folder, wait_until_ready

from llmos_jax.serving.server import free_port

pytestmark = pytest.mark.slow


def test_sigterm_drains_running_requests_then_exits_zero(tmp_path):
    folder = tmp_path / "gpt2_256"
    hf_gpt2_folder(folder, n_positions=256)
    port = free_port()
    env = {**os.environ, "LLMOS_API_KEY": "sekret"}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmos_jax", "serve", f"--model={folder}", f"--port={port}",
         "--max-slots=2", "--prefill-chunk=64", "--shutdown-grace=60", "--log-level=info"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process)
        assert httpx.get(base_url + "/v1/models").status_code == 401  # the key is enforced
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="sekret", max_retries=0)
        stream = client.completions.create(
            model="gpt2_256", prompt="the cat", max_tokens=240, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = iter(stream)
        next(chunks)  # the request is running
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(base_url + "/health/ready").status_code != 503:
            assert time.monotonic() < deadline, "ready did not turn 503 after SIGTERM"
            time.sleep(0.01)
        refused = httpx.post(base_url + "/v1/completions", json={
            "model": "gpt2_256", "prompt": "a dog", "max_tokens": 2},
            headers={"Authorization": "Bearer sekret"})
        assert refused.status_code == 503, refused.text
        rest = list(chunks)
        assert rest, "the stream ended at the signal"
        assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
        assert rest[-1].usage.completion_tokens == 240  # every token, after the signal
        assert process.wait(timeout=60) == 0
        log = process.stdout.read()
        assert "draining" in log and "Traceback" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
