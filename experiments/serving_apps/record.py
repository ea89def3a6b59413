"""Serves a trained model with `llmos serve` and records request/response exchanges.

Starts the server as a subprocess on 127.0.0.1, waits for /health/ready, sends
each request of a JSON file through the official `openai` client (streamed when
the request says `"stream": true`, the text then assembled from the chunks),
writes the exchanges as Markdown, and stops the server with SIGTERM (the
graceful drain).

    python experiments/serving_apps/record.py --model=DIR --requests=FILE.json \\
        --output=FILE.md [--serve_flag=--max-slots=4 ...]

The requests file is a list of {"endpoint": "completions"|"chat", "title": ..., and
the request's fields (prompt or messages, max_tokens, temperature, ...)}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai

from llmos_jax.serving.server import free_port


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"llmos serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def run_request(client: openai.OpenAI, model: str, spec: dict) -> tuple[str, dict]:
    body = {k: v for k, v in spec.items() if k not in ("endpoint", "title")}
    extra = body.pop("extra_body", None)
    started = time.monotonic()
    first = None
    if spec["endpoint"] == "chat":
        call = client.chat.completions.create
    else:
        call = client.completions.create
    if body.get("stream"):
        pieces, finish = [], None
        for chunk in call(model=model, extra_body=extra, **body):
            for choice in chunk.choices:
                piece = choice.delta.content if spec["endpoint"] == "chat" else choice.text
                if piece:
                    first = first or time.monotonic()
                    pieces.append(piece)
                finish = choice.finish_reason or finish
        text = "".join(pieces)
        info = {"finish_reason": finish, "chunks": len(pieces)}
    else:
        response = call(model=model, extra_body=extra, **body)
        texts = [c.message.content if spec["endpoint"] == "chat" else c.text
                 for c in response.choices]
        text = texts[0] if len(texts) == 1 else "\n".join(
            f"--- choice {i} ---\n{t}" for i, t in enumerate(texts))
        info = {"finish_reason": [c.finish_reason for c in response.choices],
                "usage": {k: v for k, v in response.usage.model_dump().items() if v is not None}}
    info["seconds"] = round(time.monotonic() - started, 2)
    if first is not None:
        info["time_to_first_token_s"] = round(first - started, 2)
    return text, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--serve_flag", action="append", default=[])
    parser.add_argument("--title", default=None, help="Markdown heading of the record")
    parser.add_argument("--note_file", default=None,
                        help="Markdown placed under the heading: the model, how it was trained")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = ["llmos", "serve", f"--model={args.model}", f"--port={port}", *args.serve_flag]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        ready_s = wait_ready(url, process)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        lines = [f"# {args.title}", ""] if args.title else []
        if args.note_file:
            lines += [open(args.note_file).read().strip(), ""]
        lines += [f"Command: `{' '.join(['llmos', 'serve', f'--model={args.model}', *args.serve_flag])}`",
                 f"(ready after {ready_s:.1f} s: load, warm-up of every shape). "
                 f"Recorded by `python {' '.join(sys.argv)}` on {time.strftime('%Y-%m-%d')}.", ""]
        for spec in json.load(open(args.requests)):
            text, info = run_request(client, model, spec)
            request = {k: v for k, v in spec.items() if k not in ("endpoint", "title")}
            endpoint = "/v1/chat/completions" if spec["endpoint"] == "chat" else "/v1/completions"
            lines += [f"### {spec.get('title', endpoint)}", "",
                      f"`POST {endpoint}`", "", "```json", json.dumps(request, ensure_ascii=False,
                                                                      indent=1), "```", "",
                      "Response text:", "", "```", text, "```", "",
                      f"{json.dumps(info)}", ""]
            print(f"{spec.get('title')}: {text!r} {info}", flush=True)
        with open(args.output, "w") as out:
            out.write("\n".join(lines))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        if process.returncode not in (0, None, -signal.SIGTERM):
            sys.stderr.write(process.stderr.read()[-3000:])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
