"""Multitask training: mixing rates against their formulas, the realised mixture within sampling error, the
strategies, resume drawing the same tasks, PCGrad against hand-computed projections, and a CLI run whose per-task
metrics reach MLflow."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_post.data.mixing import TaskOrder, expected_share, mixing_rates
from lightning_post.data.multitask import exact_match
from lightning_post.losses.pcgrad import gradient_cosines, pcgrad
from tests.conftest import CONFIGS, SHARED_DATA
from tests.cli_runner import cli, client

SIZES = [1000, 100, 10]


def shares(order: TaskOrder, batches: int) -> list[float]:
    counts = [0] * len(order.sizes)
    for batch in order.batches(batches):
        for t, _ in batch:
            counts[t] += 1
    total = sum(counts)
    return [c / total for c in counts]


def test_rates_match_their_formulas():
    assert mixing_rates(SIZES, mixing="temperature", temperature=1.0) == pytest.approx([1000 / 1110, 100 / 1110,
                                                                                          10 / 1110])
    root = [1000 ** 0.5, 100 ** 0.5, 10 ** 0.5]
    assert mixing_rates(SIZES, mixing="temperature", temperature=2.0) == pytest.approx([r / sum(root) for r in root])
    assert mixing_rates(SIZES, mixing="temperature", temperature=1e6) == pytest.approx([1 / 3] * 3, abs=1e-4)
    assert mixing_rates(SIZES, mixing="proportional", cap=100) == pytest.approx([100 / 210, 100 / 210, 10 / 210])
    assert mixing_rates(SIZES, [1, 2, 1], mixing="weights") == pytest.approx([0.25, 0.5, 0.25])
    assert mixing_rates(SIZES, [0, 1, 1], mixing="proportional") == pytest.approx([0, 100 / 110, 10 / 110])
    with pytest.raises(ValueError):
        mixing_rates(SIZES, mixing="temperature", temperature=0)
    with pytest.raises(ValueError):
        mixing_rates(SIZES, [0, 0, 0])


@pytest.mark.parametrize("temperature", [1.0, 2.0, 1e6])
def test_realised_mixture_within_sampling_error(temperature):
    rates = mixing_rates(SIZES, temperature=temperature)
    draws = 2000 * 8
    got = shares(TaskOrder(SIZES, rates, batch_size=8, seed=3), 2000)
    for share, (p, sd) in zip(got, expected_share(rates, draws)):
        assert abs(share - p) < 4 * sd + 1e-12, (share, p, sd)


def test_each_task_cycles_through_its_examples_before_repeating():
    order = TaskOrder([3, 5], [0.5, 0.5], batch_size=4, seed=0)
    seen = {0: [], 1: []}
    for batch in order.batches(10):
        for t, i in batch:
            seen[t].append(i)
    for t, size in ((0, 3), (1, 5)):
        for start in range(0, len(seen[t]) - size + 1, size):
            assert sorted(seen[t][start:start + size]) == list(range(size))


def test_alternating_and_curriculum_strategies():
    alt = TaskOrder([4, 4, 4], [0.2, 0.0, 0.8], batch_size=3, seed=0, strategy="alternating").batches(4)
    assert [{t for t, _ in b} for b in alt] == [{0}, {2}, {0}, {2}]  # whole batches, in turn, rate-0 task skipped
    stages = [[1.0, 0.0], [0.0, 1.0]]
    cur = TaskOrder([5, 5], [0.5, 0.5], batch_size=2, seed=0, strategy="curriculum", stages=stages,
                    stage_batches=[3, 2]).batches(7)
    assert [{t for t, _ in b} for b in cur] == [{0}] * 3 + [{1}] * 4  # the last stage runs to the end


def test_draws_are_seeded_and_a_resumed_sampler_continues_the_same_sequence():
    from lightning_post.data.multitask import MultiTaskSampler

    order = TaskOrder(SIZES, mixing_rates(SIZES, temperature=2.0), batch_size=4, seed=7)
    offsets = [0, 1000, 1100, 1110]
    full = list(MultiTaskSampler(order, offsets, 10, 1, 0, seed=7, batch_size=4))
    resumed = MultiTaskSampler(order, offsets, 10, 1, 0, seed=7, batch_size=4)
    resumed.skip_batches = 6  # what the data module sets from a restored checkpoint's batch count
    assert full[:24] + list(resumed) == full
    assert list(MultiTaskSampler(TaskOrder(SIZES, order.rates, 4, seed=8), offsets, 10, 1, 0, 8, 4)) != full
    # two ranks split every global batch of 8 draws: together they see the one-process stream
    order8 = TaskOrder(SIZES, order.rates, batch_size=8, seed=7)
    one = list(MultiTaskSampler(order8, offsets, 5, 1, 0, seed=7, batch_size=8))
    ranks = [list(MultiTaskSampler(order8, offsets, 5, 2, r, seed=7, batch_size=4)) for r in (0, 1)]
    assert [i for b in range(5) for r in ranks for i in r[b * 4:(b + 1) * 4]] == one


def test_pcgrad_equals_hand_computed_projections():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1.g2 = -1 < 0: g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1); sum (0.5, 1.5)
    assert torch.allclose(pcgrad(torch.stack([g1, g2])), torch.tensor([0.5, 1.5]))
    # no conflict: the plain sum
    same = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    assert torch.allclose(pcgrad(same), same.sum(0))
    # three tasks, g3 conflicts with g1 only; projections against the original gradients, in index order
    g = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    p1 = g[0] - (g[0] @ g[2]) / (g[2] @ g[2]) * g[2]  # (1, 0, 1)
    p3 = g[2] - (g[2] @ g[0]) / (g[0] @ g[0]) * g[0]  # (0, 0, 1)
    assert torch.allclose(pcgrad(g), p1 + g[1] + p3)
    assert torch.allclose(p1, torch.tensor([1.0, 0.0, 1.0])) and torch.allclose(p3, torch.tensor([0.0, 0.0, 1.0]))
    # the projected gradients no longer conflict with the originals they were projected off
    assert p1 @ g[2] >= -1e-6 and p3 @ g[0] >= -1e-6
    cos = gradient_cosines(torch.stack([g1, g2]))
    assert cos[0, 1] == pytest.approx(-1 / math.sqrt(2)) and cos[0, 0] == pytest.approx(1.0)


def test_exact_match_normalisation():
    assert exact_match("Sports", " sports.") and not exact_match("Sports news", "Sports")


def test_multitask_fit_logs_per_task_metrics_and_shares(tmp_path):
    config = tmp_path / "multitask.yaml"  # the shipped config, its data paths made absolute
    config.write_text((CONFIGS / "sft/tiny_multitask.yaml").read_text().replace("../shared/data", str(SHARED_DATA)))
    out = cli(["fit", "--config", str(config), "--model.init_args.pcgrad", "true"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    c = client(tmp_path)
    exp = c.get_experiment_by_name("sft")
    run = c.search_runs([exp.experiment_id])[0]
    m = run.data.metrics
    names = ["ag_news", "imdb", "xsum"]
    # 40 records per task, 4 held out: 36 each; temperature mixing of equal sizes is uniform whatever T (run params)
    params = run.data.params
    assert [params[f"data/task_examples/{t}"] for t in names] == ["36"] * 3
    assert [float(params[f"data/task_rate/{t}"]) for t in names] == pytest.approx([1 / 3] * 3)
    # the realised shares after each of the 4 steps: the tasks drawn so far by the seeded task order (seed 0, batch 4)
    # over the 4 s rows trained on
    drawn = [[t for t, _ in batch] for batch in TaskOrder([36] * 3, [1 / 3] * 3, 4, 0).batches(4)]
    for t, name in enumerate(names):
        history = sorted(c.get_metric_history(run.info.run_id, f"data/task_share/{name}"), key=lambda x: x.step)
        seen = [sum(b.count(t) for b in drawn[:s]) / (4 * s) for s in range(1, 5)]
        assert [x.value for x in history] == pytest.approx(seen), name
    # the split's loss is the token-weighted mean of the per-task losses, so it lies between them
    task_losses = [m[f"val/{t}/loss"] for t in names]
    assert min(task_losses) - 1e-6 <= m["val/loss"] <= max(task_losses) + 1e-6 and max(task_losses) > min(task_losses)
    # exact match on the 4 held-out examples of each classification task only
    assert {k for k in m if k.endswith("/exact_match")} == {"val/ag_news/exact_match", "val/imdb/exact_match"}
    assert all((4 * m[f"val/{t}/exact_match"]).is_integer() for t in names[:2])
    # each step's conflict count is the number of negative cosines between the tasks of its batch (steps 0-3)
    cosines = {(a, b): {x.step: x.value for x in c.get_metric_history(run.info.run_id,
                                                                      f"train/grad_cosine/{names[a]}/{names[b]}")}
               for a, b in [(0, 1), (0, 2), (1, 2)]}
    conflicts = sorted(c.get_metric_history(run.info.run_id, "train/grad_conflicts"), key=lambda x: x.step)
    assert [x.step for x in conflicts] == [0, 1, 2, 3]
    for x, batch in zip(conflicts, drawn):
        present = sorted(set(batch))
        mine = [cosines[a, b][x.step] for i, a in enumerate(present) for b in present[i + 1:]]
        assert mine and all(-1 <= v <= 1 for v in mine)
        assert x.value == sum(v < 0 for v in mine), x.step


def test_per_task_loss_is_the_token_mean_of_each_task(tiny_path):
    """The per-task validation loss equals the mean token loss of that task's examples computed alone."""
    from lightning_post.data.multitask import MultiTaskDataModule
    from lightning_post.methods.sft import SFTModule

    files = SHARED_DATA / "multitask"
    dm = MultiTaskDataModule(tasks=[{"name": "news", "files": str(files / "ag_news_classify.jsonl"),
                                     "max_examples": 12},
                                    {"name": "imdb", "files": str(files / "imdb_Movie_Expressed_Sentiment.jsonl"),
                                     "max_examples": 12}],
                             tokenizer=tiny_path, val_size=3, max_length=200, eval_batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    module = SFTModule(tiny_path)
    module.configure_model()
    module.task_names = lambda: dm.task_names
    batches = [dm.collate(dm.splits["val"].rows[i:i + 4]) for i in range(0, len(dm.splits["val"].rows), 4)]
    with torch.no_grad():
        for b in batches:
            module._eval_step(b, module.val_loss, module.val_accuracy, "val")
        total, count = module._task_loss["val"]
        for t in range(2):
            rows = [e for e in dm.splits["val"].rows if e.task == t]
            alone = dm.collate(rows)
            logits, targets = module.response_logits(alone)
            expected = torch.nn.functional.cross_entropy(logits, targets)
            assert total[t] / count[t] == pytest.approx(float(expected), rel=1e-5)


def test_logging_task_gradients_leaves_the_update_unchanged(tmp_path):
    """Per-task backward passes summed (task_grad_cosine without pcgrad) give the ordinary step's update: the
    adapters after 3 steps are the same as with one backward per batch."""
    from safetensors.torch import load_file

    config = tmp_path / "multitask.yaml"
    config.write_text((CONFIGS / "sft/tiny_multitask.yaml").read_text().replace("../shared/data", str(SHARED_DATA)))
    weights = []
    for flag in ("true", "false"):
        cwd = tmp_path / flag
        cwd.mkdir()
        cli(["fit", "--config", str(config), "--model.init_args.task_grad_cosine", flag, "--trainer.max_steps", "3",
             "--trainer.val_check_interval", "3", "--data.init_args.max_exact_match", "0"], cwd)
        (adapter,) = cwd.glob("mlruns/runs/*/*/export/adapter/adapter_model.safetensors")
        weights.append(load_file(adapter))
    # LoRA r = 4 on q_proj and v_proj of the 2 layers: an A and a B matrix each
    assert len(weights[0]) == 2 * 2 * 2 and weights[0].keys() == weights[1].keys()
    assert {k.split(".")[-2] for k in weights[0]} == {"lora_A", "lora_B"}
    for k in weights[0]:
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-6), k
        if "lora_B" in k:  # B starts at zero: the 3 steps did move the adapters
            assert weights[0][k].abs().max() > 1e-4, k


def test_multitask_resume_equals_continuous(tiny_path, tmp_path):
    """Interrupted after 3 steps (mid-epoch: 5 batches per epoch) and resumed: the same tasks are drawn and steps
    4-8 have the losses of an uninterrupted run; the realised task shares continue from the checkpoint."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_post.data.multitask import MultiTaskDataModule
    from lightning_post.methods.sft import SFTModule
    from lightning_post.optim import OptimSettings

    files = SHARED_DATA / "multitask"
    tasks = [{"name": "news", "files": str(files / "ag_news_classify.jsonl"), "max_examples": 10},
             {"name": "imdb", "files": str(files / "imdb_Movie_Expressed_Sentiment.jsonl"), "max_examples": 30}]

    class Record(L.Callback):
        def __init__(self):
            self.losses, self.tasks = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(trainer.callback_metrics["train/loss"].item())
            self.tasks.append(batch["task"].tolist())

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step == 3

    def run(ckpt_path=None, interrupt=False):
        L.seed_everything(0)
        module = SFTModule(tiny_path, optim=OptimSettings(lr=0.01, warmup_steps=2))
        data = MultiTaskDataModule(tasks, temperature=2.0, val_size=2, max_length=128, batch_size=4,
                                   batches_per_epoch=5, tokenizer=tiny_path)
        rec = Record()
        cbs = [rec]
        if interrupt:
            cbs += [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1), StopAt()]
        L.Trainer(accelerator="cpu", devices=1, max_steps=8, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=cbs,
                  enable_checkpointing=interrupt).fit(module, data, ckpt_path=ckpt_path)
        return rec, module

    continuous, module_c = run()
    first, _ = run(interrupt=True)
    resumed, module_r = run(ckpt_path=str(next((tmp_path / "ckpt").glob("*step=3.ckpt"))))
    assert first.tasks + resumed.tasks == continuous.tasks
    assert resumed.losses == pytest.approx(continuous.losses[3:], abs=1e-5)
    assert torch.equal(module_r.task_seen, module_c.task_seen) and module_c.task_seen.sum() == 32
