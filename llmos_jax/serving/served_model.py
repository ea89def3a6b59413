"""What `llmos serve` serves: a model with its tokenizer, limits and chat template.

The HTTP layer (`llmos_jax.serving.api`) needs text in and out, the token
limits, and how a chat becomes a prompt; the engine needs the module and its
special ids. A `ServedModel` carries both, whatever it was loaded from (an
export, a run's model directory, a Hugging Face directory:
`llmos_jax.serving.model_source.load_served_model`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from flax import nnx

from llmos_jax.serving.chat_template import ChatTemplate, NoChatTemplate

__all__ = ["TextTokenizer", "ServedModel"]


@runtime_checkable
class TextTokenizer(Protocol):
    """Turns text into token ids and back.

    `decode` of a prefix that ends inside a multi-byte character returns the
    replacement character U+FFFD there; the streaming layer holds such text
    back until the character is complete (`llmos_jax.serving.text_stream`).
    The adapters in `llmos_jax.serving.tokenizer` also take
    `encode(text, add_special_tokens=False)` (see `ServedModel.encode_prompt`).
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
      chat_template_origin: Where the template came from (a file), for errors.
      bos_token: The BOS token's text for the template (`{{ bos_token }}`).
      eos_token: The EOS token's text for the template (`{{ eos_token }}`).
      family: The model family (`llmos_jax.models.families`), e.g. "decoder".
      adapters: LoRA adapters served over this base (`--lora`): {the name clients send
        as `model`: the folder it was read from}; the model holds them
        (`compression.multi_lora`).
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
    chat_template_origin: str = "the chat template"
    bos_token: str | None = None
    eos_token: str | None = None
    family: str = ""
    adapters: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def encode_prompt(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The token ids of a text prompt, as the model was trained to see it.

        Args:
          text: The prompt.
          add_special_tokens: False for a rendered chat template, which holds its
            special tokens already (Hugging Face tokenizers would add BOS again).
        """
        ids = (self.tokenizer.encode(text) if add_special_tokens
               else self.tokenizer.encode(text, add_special_tokens=False))
        ids = [int(t) for t in ids]
        if self.append_eos_to_prompt and self.eos_id is not None and ids:
            ids.append(self.eos_id)
        return ids

    @functools.cached_property
    def compiled_chat_template(self) -> ChatTemplate:
        """`chat_template` compiled (once).

        Raises:
          NoChatTemplate: the model has none; the message names `--chat-template`.
          UserError: the template does not compile.
        """
        if self.chat_template is None:
            raise NoChatTemplate(self.name)
        return ChatTemplate(self.chat_template, origin=self.chat_template_origin,
                            bos_token=self.bos_token, eos_token=self.eos_token)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], **variables: Any) -> str:
        """The prompt text for OpenAI chat `messages` (ending with the assistant's turn).

        Encode it with `encode_prompt(text, add_special_tokens=False)`.

        Raises:
          NoChatTemplate: the model has no template (names `--chat-template`).
          ChatTemplateError: the template refused or failed on the messages.
        """
        return self.compiled_chat_template.render(messages, add_generation_prompt=True,
                                                  **variables)
