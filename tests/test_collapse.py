"""The collapse guard: reply statistics by hand (Korean included), the guard on sequences of statistics (warns and
stops exactly when expected), and a tiny PPO run that the guard stops, with its reason as an MLflow tag."""

from __future__ import annotations

import pytest

from lightning_post.methods.collapse import STATISTICS, CollapseGuard, reply_statistics
from tests.cli_runner import cli, client
from tests.conftest import CONFIGS

EOS = 2


def test_reply_statistics_by_hand():
    """Three replies: "the cat the cat" (4 tokens + EOS), "the dog" (2 tokens + EOS), "a b c" (3 tokens, cut).
    Length (5 + 3 + 3) / 3; EOS rate 2/3; words the cat the cat the dog a b c: 6 distinct of 9; bigrams
    (the cat)(cat the)(the cat)(the dog)(a b)(b c): 5 distinct of 6."""
    stats = reply_statistics([[9, 8, 9, 8, EOS], [9, 7, EOS], [4, 5, 6]], ["the cat the cat", "The dog", "a b c"], EOS)
    assert stats == pytest.approx({"length": 11 / 3, "eos_rate": 2 / 3, "distinct_1": 6 / 9, "distinct_2": 5 / 6})
    assert list(stats) == list(STATISTICS)


def test_reply_statistics_in_korean_and_of_a_collapse():
    """Korean words are split at spaces: "정답은 42입니다" twice and "정답은 41입니다": words 정답은 x3, 42입니다 x2,
    41입니다: 3 distinct of 6; bigrams (정답은 42입니다) x2, (정답은 41입니다): 2 of 3. Identical replies: distinct-n
    is 1/#replies; empty replies (EOS only) have length 1 and no n-grams (0)."""
    ko = reply_statistics([[5, 6, EOS]] * 3, ["정답은 42입니다", "정답은 42입니다", "정답은 41입니다"], EOS)
    assert (ko["distinct_1"], ko["distinct_2"], ko["eos_rate"]) == pytest.approx((3 / 6, 2 / 3, 1.0))
    same = reply_statistics([[1, 2, 3, 4, EOS]] * 4, ["I'm sorry for the misunderstanding."] * 4, EOS)
    assert same["distinct_1"] == same["distinct_2"] == pytest.approx(1 / 4)
    empty = reply_statistics([[EOS], [EOS]], ["", ""], EOS)
    assert empty == {"length": 1.0, "eos_rate": 1.0, "distinct_1": 0.0, "distinct_2": 0.0}
    assert reply_statistics([[]], [""], EOS)["eos_rate"] == 0.0
    with pytest.raises(ValueError):
        reply_statistics([[1]], [], EOS)


def rows(**series) -> list[dict]:
    """Per-rollout statistics from one list per statistic (the others constant at 1)."""
    n = len(next(iter(series.values())))
    return [{s: series[s][i] if s in series else 1.0 for s in STATISTICS} for i in range(n)]


def test_the_guard_compares_the_last_window_with_the_first():
    """Window 2, share 0.5: the start is the mean of rollouts 1-2 (length (10 + 8) / 2 = 9, limit 4.5). Means of
    the last two from rollout 2 on: 9, 7, 5, 4 (below 4.5: collapsed at rollout 5), 3.5 (still: no second
    warning), 5 (recovered), 4 (collapsed again)."""
    guard = CollapseGuard(share=0.5, window=2)
    length = [10, 8, 6, 4, 4, 3, 7, 1]
    fired = [guard.update(r) for r in rows(length=length)]
    assert [bool(f) for f in fired] == [False, False, False, False, True, False, False, True]
    assert fired[4] == ["length fell to 4, below 0.5 x its start 9 (last 2 rollouts against the first 2)"]
    assert guard.start("length") == 9.0


def test_the_guard_watches_only_its_statistics_and_never_a_zero_start():
    """EOS rate 0 at the start cannot fall; distinct_2 is not watched; distinct_1 from 0.8 to 0.3 (< 0.4) is."""
    guard = CollapseGuard(share=0.5, window=1, stats=("eos_rate", "distinct_1"))
    fired = [guard.update(r) for r in rows(eos_rate=[0.0, 0.0, 0.0], distinct_1=[0.8, 0.5, 0.3],
                                           distinct_2=[0.9, 0.1, 0.1])]
    assert fired == [[], [], ["distinct_1 fell to 0.3, below 0.5 x its start 0.8 (last 1 rollouts against the first "
                              "1)"]]
    edge = CollapseGuard(share=0.5, window=1, stats=("length",))  # exactly the share is not below it
    assert [bool(edge.update(r)) for r in rows(length=[10.0, 5.0, 4.9])] == [False, False, True]
    two = CollapseGuard(share=0.9, window=1)
    assert len(two.update(rows(length=[5])[0])) == 0
    assert [r.split(" ")[0] for r in two.update(rows(length=[1], distinct_2=[0.1])[0])] == ["length", "distinct_2"]
    with pytest.raises(ValueError):
        CollapseGuard(share=0.5, stats=("reward",))


def test_the_guard_state_survives_a_checkpoint():
    guard = CollapseGuard(share=0.5, window=2)
    for r in rows(length=[10, 8, 6]):
        guard.update(r)
    resumed = CollapseGuard(share=0.5, window=2)
    resumed.load_state_dict(guard.state_dict())
    for r in rows(length=[3, 1]):
        assert guard.update(r) == resumed.update(r)
    assert resumed.start("length") == 9.0 and resumed.collapsed == {"length"}


@pytest.mark.parametrize("method", ["ppo", "online_dpo"])  # every on-policy method has the guard
def test_a_forced_guard_stops_the_run_with_a_tag(tmp_path, method):
    """Share 1.01 with a window of 1: the first rollout's statistics are below 1.01 x themselves (the tiny model's
    replies never end, length 8 > 0), so the run stops cleanly after the first of its 4 steps, with the reason logged
    and tagged; a guard that only warns lets the run finish."""
    args = ["fit", "--config", str(CONFIGS / f"{method}/tiny.yaml"), "--samples.enabled", "false",
            "--model.init_args.collapse_share", "1.01", "--model.init_args.collapse_window", "1"]
    out = cli([*args, "--model.init_args.collapse_action", "stop"], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name(method).experiment_id)[0]
    assert run.info.status == "FINISHED"
    tag = run.data.tags["collapse_guard"]
    assert tag.startswith("collapse guard at step 1: length fell to 8, below 1.01 x its start 8") and \
        tag.endswith("; stopping the run") and "\n" not in tag
    assert tag in out.stderr
    steps = c.get_metric_history(run.info.run_id, "objective/length")
    assert len(steps) == 1
    for name in STATISTICS:
        assert f"objective/{name}" in run.data.metrics
    cli([*args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"], tmp_path)
    warned = c.search_runs(c.get_experiment_by_name(method).experiment_id, order_by=["start_time DESC"])[0]
    assert len(c.get_metric_history(warned.info.run_id, "objective/length")) == 2
    assert not warned.data.tags["collapse_guard"].endswith("stopping the run")
