"""Chat templates: OpenAI `messages` rendered to one prompt with a Jinja2 template.

The template comes from `llmos serve --chat-template=FILE`, or from the model's
own folder: `chat_template.jinja`, else `tokenizer_config.json`'s
`chat_template` (as `transformers` saves them). It is rendered the way
`transformers`' `apply_chat_template` renders it, so Hugging Face templates
work unchanged: a sandboxed Jinja2 environment (a template cannot reach
Python objects), `trim_blocks` and `lstrip_blocks`, the variables `messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, the functions
`raise_exception(message)` and `strftime_now(format)`, and a `tojson` filter
that keeps non-ASCII text as is.

A template is compiled when the model loads, so a broken one stops the server
at start-up with the file and line named, not at the first chat request.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from llmos_jax.errors import UserError
from llmos_jax.serving.tokenizer import read_tokenizer_config

__all__ = ["CHAT_TEMPLATE_FILE", "ChatTemplate", "ChatTemplateError", "NoChatTemplate",
           "folder_chat_template", "read_chat_template"]

CHAT_TEMPLATE_FILE = "chat_template.jinja"
FLAG = "--chat-template"


class NoChatTemplate(UserError):
    """The model has no chat template; the message names `--chat-template`."""

    def __init__(self, model_name: str):
        super().__init__(
            f"model {model_name!r} has no chat template, so it cannot answer chat requests; "
            f"start the server with {FLAG}=FILE (a Jinja2 chat template), or send a plain "
            "prompt to /v1/completions.")


class ChatTemplateError(UserError):
    """The template failed on these messages (`raise_exception`, or an undefined name)."""


def read_chat_template(path: str | os.PathLike, *, flag: str = FLAG) -> str:
    """The template text of `path` (the `--chat-template` file).

    Raises:
      UserError: the file is missing or not UTF-8 text, naming `flag` and the path.
    """
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{flag}={str(path)!r}: {file} does not exist; pass a Jinja2 chat "
                        "template file.")
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{flag}={str(path)!r}: cannot read {file} as UTF-8 text ({error}); "
                        "pass a Jinja2 chat template file.") from None


def folder_chat_template(directory: str | os.PathLike) -> tuple[str, str] | None:
    """A model folder's own template and where it was found, or None.

    `chat_template.jinja` first, then `tokenizer_config.json`'s `chat_template`
    (a string, or a list of named templates, of which `default` is taken).
    """
    directory = pathlib.Path(directory)
    file = directory / CHAT_TEMPLATE_FILE
    if file.is_file():
        return read_chat_template(file, flag="chat template"), str(file)
    template = read_tokenizer_config(directory).get("chat_template")
    origin = f"{directory / 'tokenizer_config.json'} chat_template"
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return (template, origin) if isinstance(template, str) and template.strip() else None


class ChatTemplate:
    """A compiled chat template.

    Args:
      source: The Jinja2 template text.
      origin: Where it came from (a file, a config entry), named in errors.
      bos_token: The model's BOS token text (`{{ bos_token }}`), "" when it has none.
      eos_token: The model's EOS token text (`{{ eos_token }}`), "" when it has none.

    Raises:
      UserError: the template does not compile (naming `origin` and the line).
    """

    def __init__(self, source: str, *, origin: str, bos_token: str | None = None,
                 eos_token: str | None = None):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source, self.origin = source, origin
        self._tokens = {"bos_token": bos_token or "", "eos_token": eos_token or ""}
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=["jinja2.ext.loopcontrols"])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise UserError(f"chat template {origin} does not compile: {error.message} (line "
                            f"{error.lineno}); fix the template.") from None

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               **variables: Any) -> str:
        """The prompt for `messages` (OpenAI chat messages), ending with the assistant's turn.

        A message's `content` given as a list of parts has its text parts joined.
        Extra `variables` (e.g. `tools`) reach the template too.

        Raises:
          ChatTemplateError: the template refused the messages or failed on them.
        """
        import jinja2

        try:
            return self._template.render(
                messages=[_plain_message(m) for m in messages],
                add_generation_prompt=add_generation_prompt, **self._tokens, **variables)
        except _TemplateRaised as error:
            raise ChatTemplateError(f"the chat template ({self.origin}) refused the messages: "
                                    f"{error}") from None
        except (jinja2.TemplateError, TypeError, ValueError) as error:
            raise ChatTemplateError(f"the chat template ({self.origin}) failed on the messages: "
                                    f"{error}") from None


class _TemplateRaised(Exception):
    """What a template's `raise_exception(message)` raises."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(format_string: str) -> str:
    return datetime.datetime.now().strftime(format_string)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _plain_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """`message` with list-of-parts content joined to text (templates expect a string)."""
    message = dict(message)
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = "".join(
            part.get("text", "") for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text")
    return message
