"""Task and Mixture registries, the built-in catalog and `llmos tasks list`."""

import gzip
import json
import uuid

import gin
import pytest
import seqio

from llmos_jax.cli import main as cli
from llmos_jax.data import catalog, providers, registry
from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.data.data_dir import DATA_DIR_ENV
from llmos_jax.data.sentencepiece_vocab import train_sentencepiece
from llmos_jax.data.sources import FunctionSource
from llmos_jax.errors import UserError

SHAKESPEARE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
POEMS = [
    [{"title": "靜夜思", "paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"],
      "author": "李白", "id": f"p{i}-a"} for i in range(30)],
    [{"title": f"登鸛雀樓{i}", "paragraphs": ["白日依山盡，黃河入海流。"], "author": "王之渙",
      "id": f"p{i}-b"} for i in range(30)],
]


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]  # ByteVocabulary.


def _documents(source, split: str) -> list[str]:
    return [ex["text"].decode("utf-8")
            for ex in source.get_dataset(split=split, shuffle=False).as_numpy_iterator()]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A data directory with tiny copies of the shared files the catalog reads."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text(SHAKESPEARE)
    tang = tmp_path / "chinese_poetry_tang"
    tang.mkdir()
    for index, poems in enumerate(POEMS):
        data = json.dumps(poems, ensure_ascii=False).encode("utf-8")
        (tang / f"poet.tang.{index * 1000}.json.gz").write_bytes(gzip.compress(data))
    gin.clear_config()
    yield tmp_path
    gin.clear_config()


def _byte_task(name: str, texts: dict[str, list[str]]) -> str:
    source = FunctionSource(lambda split: texts[split], tuple(texts))
    return registry.register_lm_task(name, source, seqio.ByteVocabulary())


def test_unknown_task_suggests_close_registered_and_builtin_names():
    name = _byte_task(_unique("registry_demo"), {"train": ["x"]})

    with pytest.raises(UserError, match=r"LMBatches\.task_name='tiny_shakespear_char': no seqio Task"
                                        r".*Did you mean 'tiny_shakespeare_char'\?"):
        providers.get_provider("tiny_shakespear_char")
    with pytest.raises(UserError, match=f"Did you mean '{name}'"):
        providers.get_provider(name[:-1], setting="train.task_name")
    with pytest.raises(UserError, match=r"LMBatches\.split='test': .* no such split; use one of "
                                        r"\['train'\]"):
        providers.get_provider(name, "test")


def test_mixture_is_registered_with_rates_and_checks_its_tasks():
    a = _byte_task(_unique("mix_a"), {"train": ["a"]})
    b = _byte_task(_unique("mix_b"), {"train": ["b"], "validation": ["v"]})
    name = providers.register_mixture(_unique("mixture"), {a: 1.0, b: 3.0})

    summary = registry.summarize(name)
    assert summary.kind == "mixture" and summary.mixes == ((a, 1.0), (b, 3.0))
    assert summary.features == {"targets": "ByteVocabulary"}
    assert isinstance(providers.get_provider(name), seqio.Mixture)
    with pytest.raises(UserError, match=f"Did you mean '{a}'"):
        providers.register_mixture(_unique("bad"), [(a + "x", 1.0)])
    with pytest.raises(UserError, match=r"register_mixture\.tasks\[.*\]=0 .* positive rate"):
        providers.register_mixture(_unique("bad"), {a: 0})


def test_builtin_task_is_registered_on_first_lookup(data_dir):
    seqio.TaskRegistry.remove("tiny_shakespeare_char")

    task = providers.get_provider("tiny_shakespeare_char")

    assert isinstance(task, seqio.Task) and tuple(task.splits) == ("train", "validation")


def test_tiny_shakespeare_char_splits_characters_like_nanogpt(data_dir):
    task = seqio.get_mixture_or_task(catalog.register_tiny_shakespeare_char())
    cut = int(len(SHAKESPEARE) * 0.9)

    assert _documents(task.source, "train") == [SHAKESPEARE[:cut]]
    assert _documents(task.source, "validation") == [SHAKESPEARE[cut:]]
    vocabulary = task.output_features["targets"].vocabulary
    assert isinstance(vocabulary, CharacterVocabulary)
    assert vocabulary.characters == "".join(sorted(set(SHAKESPEARE)))
    assert vocabulary.vocab_size == 3 + len(set(SHAKESPEARE))


def test_tiny_shakespeare_char_can_use_a_saved_vocabulary(data_dir):
    path = CharacterVocabulary("abc").save_json(data_dir / "chars.json")
    gin.parse_config(f"register_tiny_shakespeare_char.vocab_json = '{path}'")

    task = seqio.get_mixture_or_task(catalog.register_tiny_shakespeare_char())

    assert task.output_features["targets"].vocabulary.characters == "abc"


def test_tang_poems_are_title_plus_lines_with_a_stable_disjoint_validation(data_dir):
    gin.parse_config("register_tang_poems_bytes.validation_fraction = 0.2")
    task = seqio.get_mixture_or_task(catalog.register_tang_poems_bytes())

    train, validation = _documents(task.source, "train"), _documents(task.source, "validation")
    assert train[0] == "靜夜思\n床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。"
    assert len(train) + len(validation) == 60 and 3 <= len(validation) <= 24
    ids = [ex["id"].decode() for ex in task.source.get_dataset("validation", shuffle=False)
           .as_numpy_iterator()]
    assert ids == [ex["id"].decode() for ex in task.source.get_dataset("validation", shuffle=False)
                   .as_numpy_iterator()]  # Deterministic.
    assert set(ids).isdisjoint(ex["id"].decode() for ex in task.source.get_dataset(
        "train", shuffle=False).as_numpy_iterator())


def test_tang_poems_spm_needs_a_model_and_uses_it(data_dir):
    with pytest.raises(UserError, match=r"register_tang_poems_spm\.spm_model is not set.*"
                                        r"llmos vocab train --task=tang_poems_bytes"):
        catalog.register_tang_poems_spm()
    with pytest.raises(UserError, match=r"spm_model='nope\.model'.*does not exist"):
        catalog.register_tang_poems_spm("nope.model")
    text = [p["title"] + "".join(p["paragraphs"]) for poems in POEMS for p in poems]
    model = train_sentencepiece(text, data_dir / "tang", 52, character_coverage=1.0, num_threads=1)
    gin.parse_config(f"register_tang_poems_spm.spm_model = '{model}'")

    task = providers.get_provider(catalog.register_tang_poems_spm())

    vocabulary = task.output_features["targets"].vocabulary
    assert isinstance(vocabulary, seqio.SentencePieceVocabulary) and vocabulary.vocab_size == 52


def test_llmos_tasks_list_prints_tasks_mixtures_splits_and_features(data_dir, capsys):
    a = _byte_task(_unique("listed_a"), {"train": ["a"]})
    mixture = providers.register_mixture(_unique("listed_mix"), {a: 2.0})
    seqio.TaskRegistry.remove("tang_poems_spm")

    assert cli.main(["tasks", "list", f"--data_dir={data_dir}"]) == 0

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("tasks (")
    row = next(line for line in lines if line.strip().startswith("tiny_shakespeare_char"))
    assert row.split() == ["tiny_shakespeare_char", "splits:", "train,", "validation",
                           "features:", "targets", "(CharacterVocabulary)"]
    row = next(line for line in lines if line.strip().startswith("dialogsum_bytes"))
    assert "features: inputs (ByteVocabulary), targets (ByteVocabulary)" in row
    assert any(line.strip().startswith(mixture) for line in lines)
    assert f"mixes: {a} (rate 2)" in out
    assert "built-in tasks not available" in out
    assert "  tang_poems_spm: register_tang_poems_spm.spm_model is not set" in out


def test_shared_tinyshakespeare_has_nanogpts_65_characters_and_split(shared_data_dir, monkeypatch):
    if not (shared_data_dir / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"no shared data at {shared_data_dir}")
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data_dir))
    gin.clear_config()
    task = seqio.get_mixture_or_task(catalog.register_tiny_shakespeare_char())

    assert task.output_features["targets"].vocabulary.vocab_size == 68  # 65 characters + 3.
    assert [len(_documents(task.source, s)[0]) for s in ("train", "validation")] == [1003854, 111540]


def test_shared_tang_file_parses_strictly(shared_data_dir, monkeypatch):
    if not (shared_data_dir / "chinese_poetry_tang").is_dir():
        pytest.skip(f"no shared data at {shared_data_dir}")
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data_dir))
    gin.clear_config()
    gin.parse_config("register_tang_poems_bytes.files = 'chinese_poetry_tang/poet.tang.0.json.gz'")
    try:
        task = seqio.get_mixture_or_task(catalog.register_tang_poems_bytes())
        counts = [len(task.source.read(split)) for split in ("train", "validation")]
    finally:
        gin.clear_config()
        seqio.TaskRegistry.remove("tang_poems_bytes")

    assert sum(counts) == 1000 and 5 <= counts[1] <= 40  # ~2% of 1000 poems.


def test_a_task_defined_in_gin_reads_tsv_through_lm_batches(tmp_path, monkeypatch):
    from llmos_jax.data.lm_batches import LMBatches

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood film \t1\nbad\t0\n")
    name = _unique("gin_sst2")
    gin.clear_config()
    try:
        gin.parse_config(f"""
            LMBatches.task_name = @sst2/register_lm_task()
            sst2/register_lm_task.name = '{name}'
            sst2/register_lm_task.source = @sst2/FileSource()
            sst2/register_lm_task.vocabulary = @seqio.ByteVocabulary()
            sst2/FileSource.splits = {{'train': 'sst2/train.tsv'}}
            sst2/FileSource.record_format = @TsvFormat()
            TsvFormat.fields = {{'text': 'sentence'}}
        """)
        batches = LMBatches(split="train", sequence_length=16, global_batch_size=1, pack=False,
                            process_index=0, process_count=1)
    finally:
        gin.clear_config()

    rows = [b["decoder_target_tokens"][0].tolist() for b in batches.eval_batches()]
    assert rows == [_byte_ids("good film ") + [1] + [0] * 5, _byte_ids("bad") + [1] + [0] * 12]
