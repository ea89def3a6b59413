"""`models:/NAME@ALIAS` and `models:/NAME/VERSION`: MLflow's names for registered versions.

Parsing needs no MLflow, so the CLI can tell a URI from a path cheaply and
hand paths on unchanged.
"""

from __future__ import annotations

import dataclasses

from llmos_jax.errors import UserError

SCHEME = "models:/"


@dataclasses.dataclass(frozen=True)
class ModelUri:
    """A registered model and one of its versions, by number or by alias.

    Attributes:
      name: The registered model.
      version: A version number (as MLflow's string), or None with `alias`.
      alias: An alias (`champion`), or None with `version`.
    """

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def is_model_uri(text: str | None) -> bool:
    """Whether `text` is a `models:/` URI (not a path)."""
    return bool(text) and text.startswith(SCHEME)


def parse_model_uri(text: str, *, flag: str = "--model") -> ModelUri:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION`, checked.

    Raises:
      UserError: naming `flag` and the two accepted forms.
    """
    body = text[len(SCHEME):] if text.startswith(SCHEME) else text
    forms = "models:/NAME@ALIAS or models:/NAME/VERSION, e.g. models:/shakespeare@champion"
    if "@" in body:
        name, _, alias = body.partition("@")
        if name and alias and "/" not in name:
            return ModelUri(name=name, alias=alias)
    elif body.count("/") == 1:
        name, _, version = body.partition("/")
        if name and version.isdigit():
            return ModelUri(name=name, version=str(int(version)))
    raise UserError(f"{flag}={text!r} is not a registered model URI; use {forms}.")


def parse_model_ref(text: str, *, flag: str = "NAME") -> ModelUri | str:
    """`NAME@ALIAS`, `NAME/VERSION` (as a `ModelUri`) or a bare `NAME` (as a str)."""
    body = text[len(SCHEME):] if text.startswith(SCHEME) else text
    if "@" in body or "/" in body:
        return parse_model_uri(body, flag=flag)
    if not body:
        raise UserError(f"{flag} is empty; give a registered model name.")
    return body
