"""Serving's tokenizers (seqio vocabularies, Hugging Face tokenizer.json) and chat templates."""

import json

import pytest
import seqio
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.errors import UserError
from llmos_jax.serving.chat_template import (ChatTemplate, ChatTemplateError, NoChatTemplate,
                                             folder_chat_template, read_chat_template)
from llmos_jax.serving.served_model import ServedModel, TextTokenizer
from llmos_jax.serving.tokenizer import HfTokenizer, VocabularyTokenizer, load_hf_tokenizer

CHINESE = "春眠不觉晓，处处闻啼鸟。"
REPLACEMENT = "\ufffd"

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
            "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_byte_vocabulary_decodes_a_cut_character_to_the_replacement_character():
    tokenizer = VocabularyTokenizer(seqio.ByteVocabulary())
    assert isinstance(tokenizer, TextTokenizer)
    ids = tokenizer.encode(CHINESE)
    assert len(ids) == 3 * len(CHINESE)  # three UTF-8 bytes per character
    assert tokenizer.decode(ids) == CHINESE
    for cut in range(1, len(ids)):
        text = tokenizer.decode(ids[:cut])
        whole, partial = divmod(cut, 3)
        assert text.startswith(CHINESE[:whole])
        # seqio's own decode drops the partial bytes; the stream needs to see them.
        assert text.endswith(REPLACEMENT) == bool(partial), (cut, text)
    assert tokenizer.decode([*ids[:6], 1, *ids[6:]]) == CHINESE[:2], "stops at EOS"


def test_a_distinct_inputs_vocabulary_encodes_and_the_outputs_one_decodes():
    tokenizer = VocabularyTokenizer(seqio.ByteVocabulary(), inputs=CharacterVocabulary("abc"))
    assert tokenizer.encode("cab") == [5, 3, 4]
    assert tokenizer.decode([100, 101]) == "ab" and tokenizer.vocab_size == 259


def test_hugging_face_tokenizer_round_trips_and_cuts_to_the_replacement_character(tmp_path):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["hello world", "the cat"], trainers.BpeTrainer(
        vocab_size=270, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"]))
    bpe.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_hf_tokenizer(tmp_path)
    assert isinstance(tokenizer, HfTokenizer) and isinstance(tokenizer, TextTokenizer)
    text = "hello " + CHINESE
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids[:len(ids) - 1]).endswith(REPLACEMENT)
    end = tokenizer.token_id("<|endoftext|>")
    assert tokenizer.decode([*ids, end]) == text, "special tokens are not text"


def test_missing_or_unreadable_tokenizer_json_is_named(tmp_path):
    with pytest.raises(UserError, match=r"tokenizer.json does not exist.*save_pretrained"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match=r"tokenizer.json is not a tokenizer file"):
        load_hf_tokenizer(tmp_path)


def test_chat_template_renders_messages_with_tokens_and_the_generation_prompt():
    template = ChatTemplate(TEMPLATE, origin="t.jinja", bos_token="<s>", eos_token="</s>")
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                             {"type": "text", "text": "there"}]}]
    assert template.render(messages) == (
        "<s><|system|>Be brief.</s>\n<|user|>Hi there</s>\n<|assistant|>")
    assert not template.render(messages, add_generation_prompt=False).endswith("<|assistant|>")


def test_chat_template_errors_name_the_template_and_the_flag(tmp_path):
    with pytest.raises(UserError, match=r"--chat-template='.*missing.jinja'.*does not exist"):
        read_chat_template(tmp_path / "missing.jinja")
    with pytest.raises(UserError, match=r"chat template bad.jinja does not compile.*line 1"):
        ChatTemplate("{% for m in messages %}", origin="bad.jinja")
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception("
                          "'the first message must be the user') }}{% endif %}ok",
                          origin="strict.jinja")
    with pytest.raises(ChatTemplateError, match=r"strict.jinja.*first message must be the user"):
        strict.render([{"role": "assistant", "content": "x"}])
    sandboxed = ChatTemplate("{{ messages.append(1) }}", origin="sneaky.jinja")
    with pytest.raises(ChatTemplateError, match=r"sneaky.jinja"):
        sandboxed.render([{"role": "user", "content": "x"}])


def test_a_model_without_a_template_names_the_flag():
    served = ServedModel(name="tiny", model=None, tokenizer=VocabularyTokenizer(
        seqio.ByteVocabulary()), max_context=8)
    with pytest.raises(NoChatTemplate, match=r"'tiny' has no chat template.*--chat-template=FILE"):
        served.render_chat([{"role": "user", "content": "hi"}])
    templated = ServedModel(name="tiny", model=None, tokenizer=served.tokenizer, max_context=8,
                            chat_template=TEMPLATE, eos_token="</s>")
    assert templated.render_chat([{"role": "user", "content": "hi"}]) == (
        "<|user|>hi</s>\n<|assistant|>")


def test_folder_templates_come_from_the_jinja_file_then_tokenizer_config(tmp_path):
    assert folder_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"},
                           {"name": "default", "template": "D"}]}))
    assert folder_chat_template(tmp_path)[0] == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    template, origin = folder_chat_template(tmp_path)
    assert template == "J" and origin.endswith("chat_template.jinja")
