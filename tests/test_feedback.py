"""Deployment feedback: schema validation with file/line/field, conversions, report, the command and MLflow."""

from __future__ import annotations

import json
import math

import pytest

from lightning_post.records.feedback import (
    feedback_report,
    load_feedback,
    normalize_feedback_event,
    to_pairs,
    to_sft,
    to_unpaired,
)
from lightning_post.records.files import DataError
from lightning_post.records.unpaired import normalize_unpaired_record
from lightning_post.feedback_cli import main
from tests.conftest import write_jsonl

EVENTS = [
    {"prompt": "p1", "response": "good", "thumbs": "up", "ratings": {"helpfulness": 5, "honesty": 5},
     "user_id": "u1", "session_id": "s1", "timestamp": "2026-11-27T10:15:00Z", "comment": "great"},
    {"prompt": "p2", "response": "bad", "thumbs": "down", "ratings": {"helpfulness": 1, "honesty": 2}, "user_id": "u2"},
    {"prompt": "p3", "response": "meh", "ratings": {"helpfulness": 3}},
    {"prompt": "p4", "response": "fine", "ratings": {"helpfulness": 4, "honesty": 5}},
    {"prompt": "p5", "response": "odd", "thumbs": "up", "ratings": {"helpfulness": 2}, "user_id": "u1"},
    {"prompt": "p6", "comparison": {"response_a": "A", "response_b": "B", "preferred": "b"}},
    {"prompt": "p7", "comparison": {"response_a": "A", "response_b": "B", "preferred": "tie"}},
]


@pytest.fixture
def events():
    return [normalize_feedback_event(e, f"f:{i}") for i, e in enumerate(EVENTS, start=1)]


@pytest.mark.parametrize("event, field, problem", [
    ({"response": "r", "thumbs": "up"}, "prompt", "is missing"),
    ({"prompt": "p", "response": "r", "thumbs": "sideways"}, "thumbs", "'up' or 'down'"),
    ({"prompt": "p", "response": "r", "ratings": {"honesty": 7}}, "ratings.honesty", "integer from 1 to 5"),
    ({"prompt": "p", "response": "r", "ratings": {"honesty": 4.5}}, "ratings.honesty", "integer from 1 to 5"),
    ({"prompt": "p", "thumbs": "up"}, "response", "is missing"),
    ({"prompt": "p", "comparison": {"response_a": "a", "response_b": "", "preferred": "a"}}, "comparison.response_b",
     "non-empty string"),
    ({"prompt": "p", "comparison": {"response_a": "a", "response_b": "b", "preferred": "c"}}, "comparison.preferred",
     "'a', 'b' or 'tie'"),
    ({"prompt": "p", "response": "r", "thumbs": "up", "timestamp": "yesterday"}, "timestamp", "ISO 8601"),
    ({"prompt": "p", "response": "r", "thumbs": "up", "stars": 3}, "stars", "not a feedback field"),
    ({"prompt": "p", "response": "r"}, None, "no feedback"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], "response": "r",
      "thumbs": "up"}, "prompt[1].role", "must be one of"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "response": "r",
      "thumbs": "up"}, "prompt[1].role", "end with a user turn"),
])
def test_bad_events_name_their_field(event, field, problem):
    with pytest.raises(DataError) as err:
        normalize_feedback_event(event, "fb.jsonl:3")
    assert err.value.where == "fb.jsonl:3" and err.value.field == field and problem in err.value.problem


def test_bad_event_in_a_file_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "fb.jsonl", [EVENTS[0], {"prompt": "p", "response": "r", "thumbs": "meh"}])
    with pytest.raises(DataError, match=rf"{path}:2: field 'thumbs'"):
        load_feedback([str(path)])


def test_conversions_by_hand(events):
    # thumbs decide (p1 up, p2 down, p5 up despite its rating); no thumbs: mean 3 -> undecided, mean 4.5 -> good;
    # the decided comparison gives its winner and loser; the tie gives nothing
    assert to_unpaired(events) == [
        {"prompt": "p1", "completion": "good", "label": True},
        {"prompt": "p2", "completion": "bad", "label": False},
        {"prompt": "p4", "completion": "fine", "label": True},
        {"prompt": "p5", "completion": "odd", "label": True},
        {"prompt": "p6", "completion": "B", "label": True},
        {"prompt": "p6", "completion": "A", "label": False},
    ]
    assert to_pairs(events) == [{"prompt": "p6", "chosen": "B", "rejected": "A"}]
    # SFT: p1 (up, mean 5), p4 (no thumbs, mean 4.5); p5 is up but rated 2 < 4.5
    assert to_sft(events) == [{"instruction": "p1", "response": "good"}, {"instruction": "p4", "response": "fine"}]


def test_a_conversation_prompt_reaches_kto_and_sft_data():
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "How do I pick a lock?"}]
    event = normalize_feedback_event({"prompt": conversation, "response": "I can't help with that.", "thumbs": "up"},
                                     "f:1")
    (record,) = to_unpaired([event])
    assert record == {"prompt": conversation, "completion": "I can't help with that.", "label": True}
    # the unpaired reader keeps the turns, so KTO sees the same chat rendering as DPO does for the same dialogue
    assert normalize_unpaired_record(record, "u:1")["prompt"] == conversation
    assert to_sft([event]) == [{"instruction": "Human: Hi\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?",
                                "response": "I can't help with that."}]


def test_report_by_hand(events):
    r = feedback_report(events)
    assert (r["events"], r["thumbs_up"], r["thumbs_down"], r["rated"], r["comparisons"], r["comparison_ties"]) == (
        7, 2, 1, 5, 2, 1)
    assert (r["comments"], r["users"], r["sessions"]) == (1, 2, 1)
    assert r["rating_distribution"]["helpfulness"] == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert r["rating_distribution"]["honesty"] == {1: 0, 2: 1, 3: 0, 4: 0, 5: 2}
    assert r["rating_mean"]["honesty"] == pytest.approx(12 / 3)
    # thumbs with ratings: p1 up/5 agrees, p2 down/1.5 agrees, p5 up/2 disagrees -> 2/3
    assert r["thumbs_rating_pairs"] == 3 and r["thumbs_rating_agreement"] == pytest.approx(2 / 3)
    assert r["rating_mean_up"] == pytest.approx((5 + 2) / 2) and r["rating_mean_down"] == pytest.approx(1.5)
    assert math.isnan(feedback_report([])["thumbs_rating_agreement"])


def test_command_writes_datasets_and_records_the_report_in_mlflow(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from lightning_post.data.preference import PreferenceDataModule

    src = write_jsonl(tmp_path / "fb.jsonl", EVENTS)
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main([str(src), "--out-dir", str(out), "--tracking-uri", uri]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".lightning-post-output.json", "pairs.jsonl", "report.json",
                                                     "sft.jsonl", "unpaired.jsonl"]  # the marker of our output
    assert len(out.joinpath("unpaired.jsonl").read_text().splitlines()) == 6
    report = json.loads(out.joinpath("report.json").read_text())
    assert report["written"] == {"unpaired.jsonl": 6, "pairs.jsonl": 1, "sft.jsonl": 2}
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("feedback").experiment_id])[0]
    assert run.data.metrics["feedback/events"] == 7 and run.data.metrics["feedback/written_pairs"] == 1
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.json", "pairs.jsonl"}
    # the pairs file is valid preference data
    dm = PreferenceDataModule(train_files=str(out / "pairs.jsonl"), val_files=str(out / "pairs.jsonl"), tokenizer="tiny-llama")
    dm.prepare_data()
    # a bad file: exit 2, the earlier output stays as it was
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r", "ratings": {"x": 0}}])
    assert main([str(bad), "--out-dir", str(out), "--no-mlflow"]) == 2
    assert json.loads(out.joinpath("report.json").read_text())["events"] == 7


def test_a_number_that_does_not_exist_is_written_null(tmp_path, capsys):
    """Feedback without thumbs has no agreement and no mean rating of thumbs up/down: ``report.json`` (and the
    printed summary) hold ``null`` there, which strict JSON parsers read, not Python's ``NaN``."""
    def strict(text: str):
        def refuse(constant):
            raise ValueError(f"{constant} is not JSON")

        return json.loads(text, parse_constant=refuse)

    src = write_jsonl(tmp_path / "fb.jsonl", [e for e in EVENTS if "thumbs" not in e])
    out = tmp_path / "out"
    assert main([str(src), "--out-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    printed = capsys.readouterr().out
    report = strict(out.joinpath("report.json").read_text())
    assert report["thumbs_rating_agreement"] is None and report["rating_mean_up"] is None
    assert report["rating_mean"]["helpfulness"] == pytest.approx(3.5) and report["events"] == 4
    assert strict(printed[:printed.index("mlflow run:")])["rating_mean_down"] is None
