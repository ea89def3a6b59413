"""What `llmos serve` serves: a model with its tokenizer, limits and chat template.

The HTTP layer (`llmos_jax.serving.api`) needs text in and out, the token
limits, and how a chat becomes a prompt; the engine needs the module and its
special ids. A `ServedModel` carries both, whatever it was loaded from (an
export, a run's model directory, a Hugging Face directory:
`llmos_jax.serving.model_source.load_served_model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from flax import nnx

__all__ = ["TextTokenizer", "ServedModel"]


@runtime_checkable
class TextTokenizer(Protocol):
    """Turns text into token ids and back.

    `decode` of a prefix that ends inside a multi-byte character returns the
    replacement character U+FFFD there; the streaming layer holds such text
    back until the character is complete (`llmos_jax.serving.text_stream`).
    """

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded model ready for `ServingEngine` and `create_app`.

    Attributes:
      name: The model name clients send (`/v1/models`).
      model: The NNX module holding its (possibly sharded) weights.
      tokenizer: Encodes prompts, decodes outputs.
      max_context: Positions per sequence the model supports (prompt + output for
        decoders; decoder positions for encoder-decoders).
      eos_id: Ends a generation (None: no EOS).
      decoder_start_id: Encoder-decoders' first decoder token.
      encoder_decoder: Whether the prompt is the encoder input.
      append_eos_to_prompt: Encoder-decoders trained with EOS after their inputs
        get it appended to each prompt.
      chat_template: A Jinja2 chat template (None: chat requests are refused with
        a message naming `--chat-template`).
      source: Where it was loaded from, for logs and `/v1/models`.
    """

    name: str
    model: nnx.Module
    tokenizer: TextTokenizer
    max_context: int
    eos_id: int | None = None
    decoder_start_id: int = 0
    encoder_decoder: bool = False
    append_eos_to_prompt: bool = False
    chat_template: str | None = None
    source: str = ""

    def encode_prompt(self, text: str) -> list[int]:
        """The token ids of a text prompt, as the model was trained to see it."""
        ids = [int(t) for t in self.tokenizer.encode(text)]
        if self.append_eos_to_prompt and self.eos_id is not None and ids:
            ids.append(self.eos_id)
        return ids
