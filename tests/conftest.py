"""Shared fixtures. Tests build tiny models from configs; the few tests on the real model are marked ``slow``."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Lightning is imported at collection, so that its log handler binds pytest's session stderr rather than the captured
# stream of whichever test imports it first (closed after that test: "--- Logging error ---" in later tests).
import lightning  # noqa: F401
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test needs the network

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CONFIGS = ROOT / "configs"


def pytest_sessionstart(session):
    """The shared datasets are part of the test environment (CI puts ``../shared`` beside the checkout): without
    them the run stops here with one line, instead of skipping or failing file by file."""
    if not (SHARED_DATA / "README.md").is_file():
        raise pytest.UsageError(f"{SHARED_DATA} is missing: the tests read the shared datasets; put the shared folder "
                                f"beside the repository (../shared/data)")


@pytest.fixture(scope="session")
def tiny_path() -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer, built once per machine."""
    from lightning_post.models.loading import resolve_model_path

    return resolve_model_path("tiny-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    from lightning_post.models.loading import load_tokenizer

    return load_tokenizer(tiny_path)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def small_jsonl(tmp_path) -> Path:
    """Sixteen short instruction records of varied length."""
    records = [
        {"instruction": f"Repeat the word {w} {n} times.", "input": "", "response": " ".join([w] * n)}
        for n, w in zip(range(1, 17), ["cat", "dog", "sun", "sky", "tree", "rain", "star", "moon"] * 2)
    ]
    return write_jsonl(tmp_path / "small.jsonl", records)


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    """``fit`` with configs/sft/tiny.yaml (4 LoRA steps on the bundled instructions) in a fresh folder, once per session:
    ``(folder, MLflow run)``; the export is ``run.data.tags["export_model"]``. Tests read it and never write there."""
    from tests.cli_runner import cli, client

    cwd = tmp_path_factory.mktemp("sft_run")
    cli(["fit", "--config", str(CONFIGS / "sft/tiny.yaml")], cwd)
    runs = client(cwd).search_runs(client(cwd).get_experiment_by_name("sft").experiment_id)
    assert len(runs) == 1
    return cwd, runs[0]


@pytest.fixture(scope="session")
def parrot_a(tmp_path_factory) -> str:
    """A tiny model trained to give the planted answers of tests/planted.py (its A side, judge and red team)."""
    from tests.parrot import train_parrot
    from tests.planted import judge_options, parrot_a_answers

    return train_parrot(tmp_path_factory.mktemp("parrot") / "a", parrot_a_answers(), judge_options())


@pytest.fixture(scope="session")
def parrot_b(tmp_path_factory) -> str:
    """The B side of the planted A/B test."""
    from tests.parrot import train_parrot
    from tests.planted import parrot_b_answers

    return train_parrot(tmp_path_factory.mktemp("parrot") / "b", parrot_b_answers())
