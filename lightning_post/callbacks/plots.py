"""Plots of a training run, logged to its MLflow run as ``plots/*.png`` at the end of ``fit``: the curves drawn from
the run's own metric history (loss, preference rewards, RL objective, learning rate) and the distribution of the
validation rewards of chosen and rejected replies (reward models and DPO)."""

from __future__ import annotations

import logging
from typing import Optional

import lightning as L

from lightning_post.tracking import mlflow_logger

log = logging.getLogger(__name__)

#: figure name -> the metrics drawn in it, one panel per name after the split prefix (train/val share a panel)
DEFAULT_CURVES: dict[str, list[str]] = {
    "loss": ["train/loss", "val/loss"],
    "rewards": ["train/rewards/margins", "val/rewards/margins", "train/rewards/accuracies", "val/rewards/accuracies"],
    "rl": ["objective/scores", "val/scores", "objective/kl", "val/kl"],
    "lr": ["train/lr"],
}
_SPLITS = ("train/", "val/", "test/", "objective/")


def curve_panels(history: dict[str, list[tuple[int, float]]], names: list[str]) -> dict[str, dict[str, list]]:
    """Group the histories of ``names`` into panels: ``{panel: {metric: [(step, value), ...]}}``; a panel is the
    metric name without its split (``train/loss`` and ``val/loss`` share ``loss``); metrics without history are left
    out, and so is a panel left empty.

    >>> curve_panels({"train/loss": [(1, 2.0)], "val/loss": [(2, 1.5)]}, ["train/loss", "val/loss", "train/lr"])
    {'loss': {'train/loss': [(1, 2.0)], 'val/loss': [(2, 1.5)]}}
    """
    panels: dict[str, dict[str, list]] = {}
    for name in names:
        if history.get(name):
            panel = next((name.removeprefix(s) for s in _SPLITS if name.startswith(s)), name)
            panels.setdefault(panel, {})[name] = history[name]
    return panels


def _figure(panels: dict[str, dict[str, list]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for name, points in series.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=name)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def reward_histogram(chosen, rejected, title: str):
    """Histograms of the chosen and rejected rewards, and of their margins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen, rejected = [float(x) for x in chosen], [float(x) for x in rejected]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    bins = max(5, min(30, len(chosen) // 2))
    ax.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (mean {sum(chosen) / len(chosen):.3f})")
    ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (mean {sum(rejected) / len(rejected):.3f})")
    ax.set_title("rewards")
    ax.legend(fontsize=7)
    margins = [c - r for c, r in zip(chosen, rejected)]
    bx.hist(margins, bins=bins, color="#55A868")
    bx.axvline(0, color="black", linewidth=0.8)
    bx.set_title(f"margins (share > 0: {sum(m > 0 for m in margins) / len(margins):.2f})")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


class RunPlots(L.Callback):
    """Log the run's plots to MLflow at the end of ``fit``: ``plots/<name>.png`` per entry of ``curves`` that has
    data, and ``plots/reward_distribution.png`` where the method keeps validation rewards (reward models, DPO)."""

    def __init__(self, enabled: bool = True, curves: Optional[dict[str, list[str]]] = None):
        """
        Args:
            enabled: set to false to log no plots.
            curves: figure name -> metrics drawn in it (``null`` = :data:`DEFAULT_CURVES`: loss, rewards, rl, lr).
        """
        self.enabled, self.curves = enabled, DEFAULT_CURVES if curves is None else curves
        self.logged: list[str] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if not self.enabled or logger is None or not trainer.is_global_zero:
            return
        client, run_id = logger.experiment, logger.run_id
        method = getattr(pl_module, "method", type(pl_module).__name__)
        wanted = {m for names in self.curves.values() for m in names}
        history = {m: [(h.step, h.value) for h in client.get_metric_history(run_id, m)] for m in wanted}
        figures = {}
        for name, names in self.curves.items():
            panels = curve_panels(history, names)
            if panels:
                figures[name] = _figure(panels, f"{method}: {name}")
        rewards = getattr(pl_module, "eval_rewards", {}).get("val")
        if rewards is not None and len(rewards[0]):
            figures["reward_distribution"] = reward_histogram(*rewards, f"{method}: validation rewards")
        for name, fig in figures.items():
            client.log_figure(run_id, fig, f"plots/{name}.png")
        self.logged = sorted(figures)
        log.info("logged plots %s", self.logged)
