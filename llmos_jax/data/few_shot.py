"""Few- and zero-shot Tasks: multiple choice by log-likelihood, and generated answers.

A multiple-choice example becomes one seqio example per choice: ``inputs`` is
the prompt (k solved examples from the train file, then the question) and
``targets`` the choice's text. ``llmos eval`` scores every row with the
model (``evaluation.predictors.target_scorer``: log-likelihood of the
targets after the inputs) and `multiple_choice_accuracy` groups the rows back
into examples and picks the most likely choice, with and without length
normalisation. Zero-shot is ``num_shots=0``.

Prompts are built in Python from a template, identically for every model:

    {shot 1 prompt}{shot 1 answer}{separator}...{separator}{question prompt}

where a prompt is ``prompt_template.format(**row)`` and an answer is
``choices[row[label_field]]``. Shots are drawn from the train file without
replacement by one ``random.Random(seed)`` stream in evaluation order, so the
same seed gives the same prompts on every host and run.

A generation task (`register_generation_task`) uses the same prompts, with a
shot's answer ``answer_prefix + row[answer_field]`` (the first answer when the
field lists several). ``llmos eval`` generates a continuation of each prompt;
the task's postprocessor cuts it at the first stop string (``"\n"`` by
default, as lm-evaluation-harness's ``until``) and the metrics compare it with
every acceptable answer (`llmos_jax.metrics.answer_match`: exact match, token F1).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import seqio
import tensorflow as tf

from llmos_jax.errors import UserError
from llmos_jax.metrics.answer_match import answer_f1, exact_match
from llmos_jax.metrics.multiple_choice import multiple_choice_accuracy


@dataclasses.dataclass(frozen=True)
class MultipleChoiceTemplate:
    """How a row becomes a prompt and its choices.

    Attributes:
      prompt_template: ``str.format`` template over the row's fields, e.g.
        ``"{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"``.
      choices: The continuation of each class, e.g. ``(" negative", " positive")``.
      label_field: The row's field holding the correct choice's index.
      separator: Between shots, and between the last shot and the question.
    """

    prompt_template: str
    choices: tuple[str, ...]
    label_field: str = "label"
    separator: str = "\n\n"

    def prompt(self, row: Mapping[str, Any], source: str) -> str:
        return _format_prompt(self.prompt_template, row, source)

    def answer(self, row: Mapping[str, Any], source: str) -> str:
        """A solved shot's answer: the text of its correct choice."""
        return self.choices[self.label(row, source)]

    def label(self, row: Mapping[str, Any], source: str) -> int:
        value = row.get(self.label_field)
        if not isinstance(value, int) or not 0 <= value < len(self.choices):
            raise UserError(f"{source}: {self.label_field}={value!r} is not a choice index "
                            f"(0..{len(self.choices) - 1}).")
        return value


def _format_prompt(prompt_template: str, row: Mapping[str, Any], source: str) -> str:
    try:
        return prompt_template.format(**row)
    except KeyError as error:
        raise UserError(f"{source}: the prompt template names field {error}, which the row "
                        f"lacks (it has {', '.join(sorted(row))}).") from None


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a JSON-lines file (one object per line).")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number} is not JSON ({error}).") from None
    return rows


@dataclasses.dataclass(frozen=True)
class GenerationTemplate:
    """How a row becomes a prompt and its acceptable answers.

    Attributes:
      prompt_template: ``str.format`` template over the row's fields, e.g.
        ``"Question: {question}\nAnswer:"``.
      answer_field: The row's field holding the answer, a string or a list of
        acceptable strings (a shot shows the first).
      answer_prefix: Between a shot's prompt and its answer, e.g. ``" "``.
      separator: Between shots, and between the last shot and the question.
    """

    prompt_template: str
    answer_field: str = "answer"
    answer_prefix: str = " "
    separator: str = "\n\n"

    def prompt(self, row: Mapping[str, Any], source: str) -> str:
        return _format_prompt(self.prompt_template, row, source)

    def answers(self, row: Mapping[str, Any], source: str) -> list[str]:
        value = row.get(self.answer_field)
        answers = [value] if isinstance(value, str) else value
        if (not isinstance(answers, list) or not answers
                or not all(isinstance(a, str) for a in answers)):
            raise UserError(f"{source}: {self.answer_field}={value!r} is neither a string nor "
                            "a non-empty list of strings.")
        return answers

    def answer(self, row: Mapping[str, Any], source: str) -> str:
        return self.answer_prefix + self.answers(row, source)[0]


def few_shot_prompts(train_rows: Sequence[Mapping[str, Any]],
                     eval_rows: Sequence[Mapping[str, Any]],
                     template: MultipleChoiceTemplate | GenerationTemplate,
                     *, num_shots: int, seed: int) -> list[str]:
    """One prompt per evaluation row: `num_shots` solved train rows, then the row's question."""
    if num_shots > len(train_rows):
        raise UserError(f"num_shots={num_shots} exceeds the {len(train_rows)} train rows.")
    rng = random.Random(seed)
    prompts = []
    for index, row in enumerate(eval_rows):
        shots = rng.sample(range(len(train_rows)), num_shots) if num_shots else []
        parts = [template.prompt(train_rows[i], f"train row {i}")
                 + template.answer(train_rows[i], f"train row {i}") for i in shots]
        parts.append(template.prompt(row, f"evaluation row {index}"))
        prompts.append(template.separator.join(parts))
    return prompts


def choice_rows(train_rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]],
                template: MultipleChoiceTemplate, *, num_shots: int,
                seed: int) -> dict[str, list]:
    """Columns of the per-choice rows: inputs, targets, example, choice, label."""
    columns: dict[str, list] = {"inputs": [], "targets": [], "example": [], "choice": [],
                                "label": []}
    prompts = few_shot_prompts(train_rows, eval_rows, template, num_shots=num_shots, seed=seed)
    for index, (row, prompt) in enumerate(zip(eval_rows, prompts)):
        label = template.label(row, f"evaluation row {index}")
        for choice, text in enumerate(template.choices):
            columns["inputs"].append(prompt)
            columns["targets"].append(text)
            columns["example"].append(index)
            columns["choice"].append(choice)
            columns["label"].append(label)
    return columns


def multiple_choice_target(text: str, example: Mapping[str, Any] | None = None,
                           is_target: bool = False) -> Any:
    """seqio postprocessor: a target row keeps which example, choice and label it is."""
    if not is_target or example is None:
        return text
    return {"example": int(example["example"]), "choice": int(example["choice"]),
            "label": int(example["label"]), "text": text}


@gin.configurable
def register_multiple_choice_task(name: str, train_file: str, eval_file: str,
                                  vocabulary: seqio.Vocabulary, *, prompt_template: str,
                                  choices: Sequence[str], label_field: str = "label",
                                  separator: str = "\n\n", num_shots: int = 0, seed: int = 1234,
                                  metric_fns: Sequence = ()) -> str:
    """Registers a k-shot multiple-choice Task over two local JSON-lines files.

    Its ``validation`` split holds one row per (example, choice) of `eval_file`;
    shots come from `train_file`. Neither ``inputs`` nor ``targets`` gets EOS:
    the score is that of the choice's text alone.

    Args:
      metric_fns: Default ``[multiple_choice_accuracy]``.

    Returns:
      ``name``.
    """
    template = MultipleChoiceTemplate(prompt_template, tuple(choices), label_field, separator)

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed
        columns = choice_rows(read_jsonl(train_file), read_jsonl(eval_file), template,
                              num_shots=num_shots, seed=shots_seed)
        return tf.data.Dataset.from_tensor_slices(columns)

    shots_seed = seed
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
        preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True)],
        output_features={key: seqio.Feature(vocabulary=vocabulary, add_eos=False)
                         for key in ("inputs", "targets")},
        metric_fns=list(metric_fns) or [multiple_choice_accuracy],
        postprocess_fn=multiple_choice_target)
    return name


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the first of `stop_strings`, stripped of surrounding whitespace."""
    for stop in stop_strings:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


@gin.configurable
def register_generation_task(name: str, train_file: str, eval_file: str,
                             vocabulary: seqio.Vocabulary, *, prompt_template: str,
                             answer_field: str = "answer", answer_prefix: str = " ",
                             separator: str = "\n\n", stop_strings: Sequence[str] = ("\n",),
                             num_shots: int = 0, seed: int = 1234,
                             metric_fns: Sequence = ()) -> str:
    """Registers a k-shot generation Task (generated answers) over two JSON-lines files.

    Its ``validation`` split holds one row per line of `eval_file`: ``inputs``
    is the k-shot prompt, ``targets`` the first answer (what the model is
    scored on by log-likelihood). Predictions are cut at the first of
    `stop_strings`; targets postprocess to the list of acceptable answers.

    Args:
      metric_fns: Default ``[exact_match, answer_f1]``.

    Returns:
      ``name``.
    """
    template = GenerationTemplate(prompt_template, answer_field, answer_prefix, separator)
    stops = tuple(stop_strings)

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed
        eval_rows = read_jsonl(eval_file)
        prompts = few_shot_prompts(read_jsonl(train_file), eval_rows, template,
                                   num_shots=num_shots, seed=shots_seed)
        answers = [template.answers(row, f"evaluation row {i}") for i, row in enumerate(eval_rows)]
        return tf.data.Dataset.from_tensor_slices({
            "inputs": prompts, "targets": [a[0] for a in answers],
            "answers": [json.dumps(a) for a in answers]})

    def postprocess(text: str, example: Mapping[str, Any] | None = None,
                    is_target: bool = False) -> Any:
        if not is_target:
            return cut_at_stop(text, stops)
        if example is None or "answers" not in example:
            return [text]
        raw = example["answers"]
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)

    shots_seed = seed
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
        preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True)],
        output_features={"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False),
                         "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)},
        metric_fns=list(metric_fns) or [exact_match, answer_f1],
        postprocess_fn=postprocess)
    return name
