"""Online serving: a continuous-batching engine and an OpenAI-compatible HTTP API.

`import llmos_jax.serving` stays light; the HTTP layer (FastAPI) is imported only
by `llmos_jax.serving.api` and the `llmos serve` command.
"""
