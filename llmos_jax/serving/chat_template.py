"""TEMPORARY (replaced by the serve-src branch): renders chat messages with a Jinja2 template."""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment


def render_chat(template: str, messages: list[dict]) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)
