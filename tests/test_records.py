"""Bad input stops with file, line and field; every accepted layout and format loads."""

import json

import datasets
import pytest

from lightning_post.records.files import DataError
from lightning_post.records.instruction import load_instruction_records
from tests.conftest import write_jsonl

GOOD = {"instruction": "Say hi.", "response": "Hi."}


def bad_file(tmp_path, bad_line: str):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n" + bad_line + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "line, field, problem",
    [
        ('{"instruction": "x", "response": ', None, "invalid JSON"),
        ('{"instruction": "x"}', "response", "is missing"),
        ('{"instruction": "x", "response": 5}', "response", "must be a string, got int"),
        ('{"instruction": "x", "response": "  "}', "response", "is empty"),
        ('{"response": "x"}', "instruction", "is missing"),
        ('{"prompt": "x", "completion": ""}', "completion", "is empty"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "messages", "no assistant turn"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "messages[0].role", "must be one of"),
        ('[1, 2]', None, "must be a JSON object"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, field, problem):
    path = bad_file(tmp_path, line)
    with pytest.raises(DataError) as err:
        load_instruction_records([path])
    assert err.value.where == f"{path}:3"
    assert err.value.field == field
    assert problem in str(err.value)
    assert str(err.value).startswith(f"{path}:3: ")


def test_all_layouts(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"instruction": "a", "input": "b", "response": "c"},
        {"instruction": "a", "output": "c"},
        {"prompt": "p", "completion": "q"},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]},
    ])
    assert load_instruction_records([path]) == [
        {"instruction": "a", "input": "b", "response": "c"},
        {"instruction": "a", "input": "", "response": "c"},
        {"instruction": "p", "input": "", "response": "q"},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]},
    ]


def test_json_parquet_and_saved_dataset(tmp_path):
    rows = [{"instruction": f"i{n}", "input": "", "response": f"r{n}"} for n in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for path in ("a.json", "a.parquet", "saved"):
        assert load_instruction_records([tmp_path / path]) == rows, path


def test_parquet_error_names_row(tmp_path):
    datasets.Dataset.from_list([GOOD, {"instruction": "x", "response": ""}]).to_parquet(str(tmp_path / "b.parquet"))
    with pytest.raises(DataError, match=r"b.parquet row 1: field 'response': is empty"):
        load_instruction_records([tmp_path / "b.parquet"])


def test_missing_file_and_unsupported_format(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_instruction_records([tmp_path / "nope.jsonl"])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported format"):
        load_instruction_records([tmp_path / "x.csv"])


def test_shared_self_instruct_predictions_load():
    from tests.conftest import SHARED_DATA

    # the shared data is part of the environment (CI clones ../shared beside the checkout): its absence is an error
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} (../shared/data) is missing: clone the shared folder beside the repository"
    path = SHARED_DATA / "instructions" / "predictions" / "text-davinci-003.jsonl"
    records = load_instruction_records([path])
    assert len(records) == 252 and all(r["response"].strip() for r in records)
    # every answer in the file opens with whitespace (" ", "\n\n", ...); the loaded targets do not
    raw = [json.loads(line)["response"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(r != r.lstrip() for r in raw)
    assert [r["response"] for r in records] == [r.strip() for r in raw]


def test_targets_lose_surrounding_whitespace_prompts_keep_it(tmp_path):
    path = write_jsonl(tmp_path / "ws.jsonl", [
        {"instruction": "  Name a colour.", "input": "\nred or blue ", "response": "\n\nBlue. \n"},
        {"prompt": "p ", "completion": " q"},
        {"messages": [{"role": "system", "content": " s "}, {"role": "user", "content": " u\n"},
                      {"role": "assistant", "content": "\n  v  "}]},
    ])
    assert load_instruction_records([path]) == [
        {"instruction": "  Name a colour.", "input": "\nred or blue ", "response": "Blue."},
        {"instruction": "p ", "input": "", "response": "q"},
        {"messages": [{"role": "system", "content": " s "}, {"role": "user", "content": " u\n"},
                      {"role": "assistant", "content": "v"}]},
    ]
