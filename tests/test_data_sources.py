"""Data directory, record formats (TSV/JSONL/JSON/lines/text, gzipped or not) and seqio sources."""

import gzip
import json
import logging
import pathlib

import gin
import pytest
import seqio

from llmos_jax.data import data_dir as data_dir_module
from llmos_jax.data.data_dir import DATA_DIR_ENV, data_dir, resolve_data_files, resolve_data_path
from llmos_jax.data.records import (JsonArrayFormat, JsonlFormat, LinesFormat, TextFormat,
                                    TsvFormat, read_records)
from llmos_jax.data.sources import FileSource, FunctionSource, HeldOut, tfds_source
from llmos_jax.errors import UserError


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _write(path: pathlib.Path, text: str, gz: bool = False) -> pathlib.Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _examples(source, split: str) -> list[dict[str, str]]:
    dataset = source.get_dataset(split=split, shuffle=False)
    return [{k: v.decode("utf-8") for k, v in ex.items()} for ex in dataset.as_numpy_iterator()]


# --- data directory ---------------------------------------------------------------------------


def test_data_dir_gin_wins_over_env_which_wins_over_default(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert data_dir() == data_dir_module.DEFAULT_DATA_DIR
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    gin.parse_config(f"data_dir.path = '{tmp_path / 'gin'}'")
    assert data_dir() == tmp_path / "gin"


def test_relative_paths_resolve_against_the_data_dir_absolute_ones_do_not(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.txt", "b")
    _write(tmp_path / "sub" / "a.txt", "a")
    elsewhere = _write(tmp_path / "elsewhere.txt", "e")

    assert resolve_data_path("sub/a.txt", "x.path") == tmp_path / "sub" / "a.txt"
    assert resolve_data_path(str(elsewhere), "x.path") == elsewhere
    assert resolve_data_files("sub/*.txt", "x.files") == [tmp_path / "sub" / "a.txt",
                                                         tmp_path / "sub" / "b.txt"]


def test_missing_path_names_the_path_the_setting_and_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))

    with pytest.raises(UserError) as error:
        resolve_data_path("nowhere/input.txt", "register_x.path")
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "input.txt") in message
    assert "register_x.path" in message and DATA_DIR_ENV in message and "data_dir.path" in message
    with pytest.raises(UserError, match=r"no file matches .*\*\.tsv.*LLMOS_DATA_DIR"):
        resolve_data_files("*.tsv", "FileSource.splits['train']")


# --- record formats ---------------------------------------------------------------------------


def test_tsv_columns_by_header_name_gzipped(tmp_path):
    path = _write(tmp_path / "train.tsv.gz", "sentence\tlabel\nhello there \t1\n\nbye\t0\n", gz=True)

    result = read_records(path, TsvFormat(fields={"text": "sentence", "label": "label"}),
                          strict=True, setting="s.strict")

    assert result.records == [{"text": "hello there ", "label": "1"}, {"text": "bye", "label": "0"}]


def test_tsv_columns_by_index_without_header(tmp_path):
    path = _write(tmp_path / "plain.tsv", "1\tfirst row\n0\tsecond\textra\n")

    result = read_records(path, TsvFormat(fields={"text": 1}, header=False), strict=True,
                          setting="s.strict")

    assert result.records == [{"text": "first row"}, {"text": "second"}]


def test_tsv_unknown_column_suggests_the_header_name(tmp_path):
    path = _write(tmp_path / "t.tsv", "sentence\tlabel\na\t1\n")

    with pytest.raises(UserError, match=r"t\.tsv:1: no column 'sentense'.*Did you mean 'sentence'"):
        read_records(path, TsvFormat(fields={"text": "sentense"}), strict=True, setting="s")


def test_jsonl_fields_by_key_gzipped_lists_joined_by_newlines(tmp_path):
    lines = [{"dialogue": "#P1#: hi", "summary": "greeting", "extra": 1},
             {"dialogue": ["line one", "line two"], "summary": "two"}]
    path = _write(tmp_path / "d.jsonl.gz", "".join(json.dumps(x) + "\n" for x in lines), gz=True)

    result = read_records(path, JsonlFormat(fields={"inputs": "dialogue", "targets": "summary"}),
                          strict=True, setting="s")

    assert result.records == [{"inputs": "#P1#: hi", "targets": "greeting"},
                              {"inputs": "line one\nline two", "targets": "two"}]


def test_json_array_joins_several_keys(tmp_path):
    poems = [{"title": "靜夜思", "paragraphs": ["床前明月光，", "疑是地上霜。"], "id": "a"}]
    path = _write(tmp_path / "p.json.gz", json.dumps(poems, ensure_ascii=False), gz=True)

    result = read_records(path, JsonArrayFormat(fields={"text": ["title", "paragraphs"], "id": "id"}),
                          strict=True, setting="s")

    assert result.records == [{"text": "靜夜思\n床前明月光，\n疑是地上霜。", "id": "a"}]


def test_lines_and_text_formats(tmp_path):
    path = _write(tmp_path / "l.txt.gz", "one\r\n\n two \n", gz=True)

    assert read_records(path, LinesFormat(), strict=True, setting="s").records == [
        {"text": "one"}, {"text": " two "}]
    assert read_records(path, TextFormat(), strict=True, setting="s").records == [
        {"text": "one\r\n\n two \n"}]


MALFORMED_JSONL = '{"text": "good"}\n{"text": \n{"other": "x"}\n["a"]\n{"text": 3}\n{"text": "also good"}\n'


def test_malformed_jsonl_strict_fails_with_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", MALFORMED_JSONL)

    with pytest.raises(UserError, match=r"bad\.jsonl:2: malformed JsonlFormat line: invalid JSON"
                                        r".*FileSource\.strict=False"):
        read_records(path, JsonlFormat(), strict=True, setting="FileSource.strict")


def test_malformed_jsonl_lenient_skips_counts_and_logs(tmp_path, caplog):
    path = _write(tmp_path / "bad.jsonl", MALFORMED_JSONL)

    with caplog.at_level(logging.WARNING, logger="llmos_jax.data"):
        result = read_records(path, JsonlFormat(), strict=False, setting="FileSource.strict")

    assert result.records == [{"text": "good"}, {"text": "also good"}]
    assert result.skipped == 4
    assert result.first_skipped.startswith(f"{path}:2: invalid JSON")
    assert f"skipped 4 malformed line(s) of {path}" in caplog.text


def test_malformed_tsv_line_strict_and_lenient(tmp_path):
    path = _write(tmp_path / "bad.tsv", "sentence\tlabel\nok\t1\nno label here\nfine\t0\n")
    fmt = TsvFormat(fields={"text": "sentence"})

    with pytest.raises(UserError, match=r"bad\.tsv:3: .*1 tab-separated columns, expected 2"):
        read_records(path, fmt, strict=True, setting="s.strict")
    result = read_records(path, fmt, strict=False, setting="s.strict")
    assert [r["text"] for r in result.records] == ["ok", "fine"] and result.skipped == 1


def test_invalid_utf8_line_is_malformed(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")

    result = read_records(path, LinesFormat(), strict=False, setting="s")

    assert result.records == [{"text": "fine"}] and "invalid UTF-8" in result.first_skipped


# --- sources ----------------------------------------------------------------------------------


def test_file_source_reads_splits_one_shard_per_file(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    _write(tmp_path / "part-0.jsonl.gz", '{"text": "a"}\n{"text": "b"}\n', gz=True)
    _write(tmp_path / "part-1.jsonl", '{"text": "c"}\n')
    _write(tmp_path / "dev.jsonl", '{"text": "v"}\n')
    source = FileSource({"train": "part-*", "validation": "dev.jsonl"}, JsonlFormat())

    assert source.list_shards("train") == [str(tmp_path / "part-0.jsonl.gz"),
                                           str(tmp_path / "part-1.jsonl")]
    assert _examples(source, "train") == [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    assert _examples(source, "validation") == [{"text": "v"}]
    second = source.get_dataset("train", shuffle=False, shard_info=seqio.ShardInfo(1, 2))
    assert [ex["text"] for ex in second.as_numpy_iterator()] == [b"c"]


def test_held_out_split_is_disjoint_stable_and_covers_everything(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    records = [{"text": f"poem {i}", "id": f"id-{i}"} for i in range(200)]
    _write(tmp_path / "all.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    fmt = JsonlFormat(fields={"text": "text", "id": "id"})
    held_out = HeldOut("validation", 0.1, "id")
    source = FileSource({"train": "all.jsonl", "validation": "all.jsonl"}, fmt, held_out=held_out)

    train = {ex["id"] for ex in _examples(source, "train")}
    validation = {ex["id"] for ex in _examples(source, "validation")}

    assert not train & validation and len(train | validation) == 200
    assert 8 <= len(validation) <= 35  # ~10% of 200.
    assert validation == {r["id"] for r in records if held_out.holds(r)}  # Hash of the id alone.


def test_empty_corpus_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    _write(tmp_path / "empty.jsonl", "\n\n")
    _write(tmp_path / "broken.jsonl", "{nope\n")

    with pytest.raises(UserError, match=r"split 'train' of my_task is empty.*hold no records"):
        FileSource({"train": "empty.jsonl"}, JsonlFormat(), setting="my_task").read("train")
    with pytest.raises(UserError, match=r"all 1 record\(s\) were malformed and skipped"):
        FileSource({"train": "broken.jsonl"}, JsonlFormat(), strict=False).read("train")


def test_missing_source_file_fails_when_read_not_when_declared(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    source = FileSource({"train": "later/*.tsv"}, TsvFormat(fields={"text": 0}), setting="reg_x")

    with pytest.raises(UserError, match=r"reg_x\.splits\['train'\]='later/\*\.tsv'.*LLMOS_DATA_DIR"):
        source.read("train")


def test_function_source_accepts_strings_and_records():
    calls = []

    def records(split):
        calls.append(split)
        return ["plain"] if split == "train" else [{"text": "dict"}]

    source = FunctionSource(records, ("train", "validation"))

    assert _examples(source, "train") == [{"text": "plain"}]
    assert _examples(source, "train") == [{"text": "plain"}]
    assert _examples(source, "validation") == [{"text": "dict"}]
    assert calls == ["train", "validation"]  # Computed once per split.


def test_tfds_source_refuses_to_download_and_wraps_a_prepared_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))

    with pytest.raises(UserError, match=r"tfds_source\.data_dir='tfds': .* does not exist"):
        tfds_source("mnist:3.0.1", ["train"], data_dir="tfds")
    (tmp_path / "tfds").mkdir()
    with pytest.raises(UserError, match=r"TFDS dataset 'mnist:3\.0\.1' is not prepared at "
                                        r".*tfds/mnist; run `tfds build mnist"):
        tfds_source("mnist:3.0.1", ["train"], data_dir="tfds")
    with pytest.raises(UserError, match=r"tfds_source\.data_dir is unset"):
        tfds_source("mnist", ["train"])
    (tmp_path / "tfds" / "mnist").mkdir()

    source = tfds_source("mnist:3.0.1", {"train": "train[:90%]", "validation": "train[90%:]"},
                         data_dir="tfds")  # Constructing reads nothing.

    assert tuple(source.splits) == ("train", "validation")
    assert source.tfds_dataset.data_dir == str(tmp_path / "tfds")


def test_file_source_keeps_the_data_dir_it_was_created_with(tmp_path, monkeypatch):
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "t.jsonl", json.dumps({"text": name}) + "\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "first"))
    source = FileSource({"train": "t.jsonl"}, JsonlFormat())
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "second"))

    assert _examples(source, "train") == [{"text": "first"}]
