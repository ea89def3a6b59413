"""The OpenAI-compatible API, through the official `openai` client against a real server."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from serving_api_helpers import byte_tokenizer, greedy_reference, tiny_served_model

from llmos_jax.serving.api import ApiOptions
from llmos_jax.serving.server import EngineOptions, background_server

SLOTS = 4
KEY = "test-key-123"


@pytest.fixture(scope="module")
def served():
    return tiny_served_model(context=128)


@pytest.fixture(scope="module")
def server(served):
    options = EngineOptions(max_slots=SLOTS, max_queue=96, prefill_chunk=16)
    with background_server(served, engine_options=options,
                           api_options=ApiOptions(api_keys=(KEY,), max_body_bytes=64 * 1024)
                           ) as running:
        running.compiled_at_ready = running.engine.stats().compilations
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference(served):
    return greedy_reference(served, max_new_tokens=32)


def metric(server, name: str, labels: str = "", default: float | None = None) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_completions_non_streaming_and_streaming_agree(client, served, reference):
    prompt = "To be, or not to be"
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    choice = done.choices[0]
    expected = reference(served.encode_prompt(prompt), 12)
    assert choice.text == served.tokenizer.decode(expected)
    assert choice.finish_reason == ("length" if len(expected) == 12 else "stop")
    assert done.usage.prompt_tokens == len(prompt.encode())
    assert done.usage.completion_tokens == len(expected)

    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == choice.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason


def test_chat_through_the_template_streaming_and_not(client, served, reference):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}]
    done = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                          temperature=0)
    prompt = "<system>Be brief.\n<user>Hello\n<assistant>"
    expected = served.tokenizer.decode(reference(served.encode_prompt(prompt), 10))
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == expected
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


def test_token_id_prompts_echo_n_logprobs_and_extras(client, served):
    ids = served.encode_prompt("abc")
    done = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=1.0,
                                     n=3, seed=11, echo=True, logprobs=2,
                                     extra_body={"ignore_eos": True, "min_tokens": 5,
                                                 "top_k": 50})
    assert [c.index for c in done.choices] == [0, 1, 2]
    for choice in done.choices:
        assert choice.text.startswith("abc") and choice.finish_reason == "length"
        assert len(choice.logprobs.token_logprobs) == 5
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
        assert all(len(top) >= 1 for top in choice.logprobs.top_logprobs)
    assert done.usage.completion_tokens == 15 and done.usage.prompt_tokens == 3
    again = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=1.0,
                                      n=3, seed=11, echo=True, logprobs=2,
                                      extra_body={"ignore_eos": True, "top_k": 50})
    assert [c.text for c in again.choices] == [c.text for c in done.choices]  # seed reproduces


def test_stop_strings_are_never_sent_even_when_streamed(client):
    free = client.completions.create(model="tiny", prompt="xyz", max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True})
    text = free.choices[0].text
    stop = text[5:7]
    assert len(stop) == 2
    stopped = client.completions.create(model="tiny", prompt="xyz", max_tokens=20, temperature=0,
                                        stop=[stop], extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[:text.index(stop)]
    streamed = client.completions.create(model="tiny", prompt="xyz", max_tokens=20,
                                         temperature=0, stop=[stop], stream=True,
                                         extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text


def test_models_tokenize_detokenize(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    headers = {"Authorization": f"Bearer {KEY}"}
    tokens = httpx.post(server.base_url + "/tokenize", json={"prompt": "héllo"},
                        headers=headers).json()
    assert tokens["tokens"] == byte_tokenizer().encode("héllo") and tokens["count"] == 6
    text = httpx.post(server.base_url + "/detokenize", json={"tokens": tokens["tokens"]},
                      headers=headers).json()
    assert text == {"prompt": "héllo"}


def test_keys_health_metrics_and_request_ids(server):
    url = server.base_url
    assert httpx.get(url + "/v1/models").status_code == 401
    wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(url + "/tokenize", json={"prompt": "a"}).status_code == 401
    for path in ("/health/live", "/health/ready", "/metrics"):
        response = httpx.get(url + path)
        assert response.status_code == 200 and response.headers["x-request-id"]
    mine = httpx.get(url + "/health/live", headers={"X-Request-Id": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    text = httpx.get(url + "/metrics").text
    for name in ("llmos_time_to_first_token_seconds_bucket", "llmos_inter_token_latency_seconds",
                 "llmos_e2e_request_latency_seconds", "llmos_request_queue_time_seconds",
                 "llmos_num_requests_running", "llmos_num_requests_waiting",
                 "llmos_kv_cache_usage_ratio", "llmos_prompt_tokens_total",
                 "llmos_generation_tokens_total", "llmos_request_success_total",
                 "llmos_compilations_total"):
        assert name in text, name


@pytest.mark.parametrize("body, field", [
    ({"prompt": "a" * 200, "max_tokens": 4}, "prompt"),               # longer than the context
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "top_p": 1.5}, "top_p"),
    ({"prompt": "a", "top_p": 0}, "top_p"),
    ({"prompt": "a", "model": "gpt-4"}, "model"),
    ({"prompt": "a", "n": SLOTS + 1}, "n"),
    ({"prompt": [5, 300]}, "prompt"),                                 # id outside the vocabulary
    ({"prompt": "a", "temperature": -1}, "temperature"),
    ({"prompt": "a", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "a", "stop_token_ids": [999]}, "stop_token_ids"),
    ({"prompt": "a", "logit_bias": {"5": 1}}, "logit_bias"),
])
def test_bad_input_is_a_400_naming_the_field(server, client, body, field):
    body = {"model": "tiny", **body}
    response = httpx.post(server.base_url + "/v1/completions", json=body,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert field.split("_")[0] in error["message"] or field == "prompt"
    # Everyone else keeps being served.
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices


def test_malformed_json_oversized_body_and_long_prompt_capped(server, client):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    broken = httpx.post(server.base_url + "/v1/completions", content=b'{"model": "tiny", ',
                        headers=headers)
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
    huge = httpx.post(server.base_url + "/v1/completions", headers=headers,
                      content=json.dumps({"model": "tiny", "prompt": "a" * 70_000}))
    assert huge.status_code == 413 and "--max-body-bytes" in huge.json()["error"]["message"]
    # prompt + max_tokens beyond the context: capped at the context, finish_reason "length".
    capped = client.completions.create(model="tiny", prompt="b" * 120, max_tokens=50,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage.completion_tokens == 128 - 120


def test_chat_without_a_template_names_the_flag():
    served = tiny_served_model(context=32, chat=False)
    with background_server(served, engine_options=EngineOptions(max_slots=1)) as running:
        client = openai.OpenAI(base_url=running.base_url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="--chat-template"):
            client.chat.completions.create(model="tiny",
                                           messages=[{"role": "user", "content": "hi"}])


async def _one_stream(client, index: int, prompt: str, max_tokens: int, greedy: bool):
    settings = dict(temperature=0) if greedy else dict(temperature=1.5, seed=index)
    stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                             stream=True, **settings)
    text, finish = "", None
    async for chunk in stream:
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    return index, text, finish


def test_64_concurrent_streaming_clients(server, served, reference):
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0,
                                timeout=120)
    prompts = [f"client {i}: " + "abcdefghij"[: i % 10] * (1 + i % 5) for i in range(64)]
    lengths = [4 + i % 9 for i in range(64)]
    greedy = [i % 2 == 0 for i in range(64)]

    async def everyone():
        return await asyncio.gather(*(
            _one_stream(client, i, prompts[i], lengths[i], greedy[i]) for i in range(64)))

    started = time.monotonic()
    results = asyncio.run(asyncio.wait_for(everyone(), timeout=240))
    assert time.monotonic() - started < 240
    assert len(results) == 64
    for index, text, finish in results:
        assert finish in ("stop", "length")
        if greedy[index]:
            expected = reference(served.encode_prompt(prompts[index]), lengths[index])
            assert text == served.tokenizer.decode(expected), index
    assert metric(server, "llmos_compilations_total") == server.compiled_at_ready
    five_hundreds = [line for line in httpx.get(server.base_url + "/metrics").text.splitlines()
                     if line.startswith("llmos_http_requests_total") and 'status="5' in line]
    assert not five_hundreds


def test_long_prompt_does_not_stall_running_streams(server, client):
    """A maximum-length prompt prefills in chunks while other streams keep getting tokens."""
    gaps = []

    def stream_one():
        last = None
        for chunk in client.completions.create(model="tiny", prompt="go", max_tokens=60,
                                               temperature=0, stream=True,
                                               extra_body={"ignore_eos": True}):
            now = time.monotonic()
            if last is not None:
                gaps.append(now - last)
            last = now

    runner = threading.Thread(target=stream_one)
    runner.start()
    time.sleep(0.3)
    long = client.completions.create(model="tiny", prompt="z" * 127, max_tokens=1,
                                      temperature=0)
    runner.join(60)
    assert long.choices[0].finish_reason == "length"
    assert len(gaps) >= 20
    assert max(gaps) < 2.0  # one chunk of prefill per step, never the whole prompt
    assert metric(server, "llmos_compilations_total") == server.compiled_at_ready


def test_disconnect_frees_the_slot_within_a_step(server):
    url = server.base_url + "/v1/completions"
    body = {"model": "tiny", "prompt": "leave", "max_tokens": 100_000, "stream": True,
            "ignore_eos": True, "temperature": 0}
    before = metric(server, "llmos_request_success_total", 'finished_reason="abort"', 0.0)
    with httpx.stream("POST", url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.monotonic() + 5
    while server.engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.engine.stats().running == 0
    assert metric(server, "llmos_request_success_total",
                  'finished_reason="abort"') == before + 1


def test_overload_gets_429_with_retry_after_then_drain():
    served = tiny_served_model(context=1024)
    options = EngineOptions(max_slots=1, max_queue=0, prefill_chunk=16)
    with background_server(served, engine_options=options, shutdown_grace=60) as running:
        url = running.base_url + "/v1/completions"
        # Holds the one slot until the context (1,023 tokens: a few seconds, even on a loaded
        # machine) is full, so the refusal and the drain below happen while it runs.
        body = {"model": "tiny", "prompt": "x", "max_tokens": 4000, "temperature": 0,
                "ignore_eos": True}
        first = {}
        holder = threading.Thread(target=lambda: first.update(
            response=httpx.post(url, json=body, timeout=60)))
        holder.start()
        deadline = time.monotonic() + 10
        while running.engine.stats().running == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        refused = httpx.post(url, json={**body, "max_tokens": 2})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        # Draining: not ready, no new requests, the running one finishes.
        running.begin_drain()
        assert httpx.get(running.base_url + "/health/ready").status_code == 503
        assert httpx.post(url, json={**body, "max_tokens": 2}).status_code == 503
        holder.join(60)
        assert first["response"].status_code == 200
        assert first["response"].json()["choices"][0]["finish_reason"] == "length"


def test_ready_is_503_until_warm_up_ends_and_timeouts_are_504():
    # The deadline must pass mid-generation on any machine: 511 decode steps take far more
    # than 20 ms (63 steps once finished in 33 ms, before the old 50 ms deadline).
    served = tiny_served_model(context=512, seed=5)
    options = EngineOptions(max_slots=2, prefill_chunk=16)
    api = ApiOptions(request_timeout=0.02)
    with background_server(served, engine_options=options, api_options=api,
                           wait_ready=False) as running:
        seen = {httpx.get(running.base_url + "/health/ready").status_code}
        assert httpx.get(running.base_url + "/health/live").status_code == 200
        deadline = time.monotonic() + 120
        while not running.engine.ready and time.monotonic() < deadline:
            seen.add(httpx.get(running.base_url + "/health/ready").status_code)
            time.sleep(0.05)
        assert 503 in seen
        assert httpx.get(running.base_url + "/health/ready").status_code == 200
        slow = {"model": "tiny", "prompt": "t", "max_tokens": 100_000, "ignore_eos": True}
        timed_out = httpx.post(running.base_url + "/v1/completions", json=slow, timeout=30)
        assert timed_out.status_code == 504 and "--request-timeout" in timed_out.text
        with httpx.stream("POST", running.base_url + "/v1/completions",
                          json={**slow, "stream": True}, timeout=30) as r:
            events = [line for line in r.iter_lines() if line]
        assert '"error"' in events[-2] and events[-1] == "data: [DONE]"
        assert running.engine.stats().running == 0
