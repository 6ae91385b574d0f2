"""Plot helpers of the commands' reports (matplotlib on the Agg backend: no display needed)."""

from __future__ import annotations

from typing import Optional


def bar_chart(title: str, values: dict[str, float], ylabel: str, ylim: Optional[tuple] = (0, 1)):
    """A bar chart of ``values`` (one bar per key), its figure closed and returned for logging."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(values) + 2), 3.2))
    ax.bar(list(values), list(values.values()), color="#4C72B0")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    plt.close(fig)
    return fig
