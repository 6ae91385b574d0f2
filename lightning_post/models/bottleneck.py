"""The bottleneck adapter (Houlsby et al. 2019): a small trainable MLP after every decoder block's MLP, written here
(no maintained library supports it on transformers 5). It imports nothing of ours: the loader gives it its base
model (:func:`load_bottleneck`), and ``peft.method: bottleneck`` adds it through :mod:`lightning_post.models.peft`.

A saved adapter is a folder with :data:`BOTTLENECK_CONFIG` (``{"base", "bottleneck_size"}``) and
:data:`BOTTLENECK_WEIGHTS` (the adapters' weights alone).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# ---- the adapter ---------------------------------------------------------------------------------------------------
BOTTLENECK_CONFIG = "bottleneck_adapter.json"
BOTTLENECK_WEIGHTS = "bottleneck_adapter.safetensors"


class BottleneckAdapter(torch.nn.Module):
    """``h + up(relu(down(h)))`` on an MLP's output ``h`` (Houlsby et al. 2019). ``up`` starts at zero, so a fresh
    adapter is the identity and training starts from the base model's outputs."""

    def __init__(self, hidden_size: int, bottleneck_size: int):
        super().__init__()
        self.down = torch.nn.Linear(hidden_size, bottleneck_size)
        self.up = torch.nn.Linear(bottleneck_size, hidden_size)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    enabled = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return h
        return h + self.up(torch.relu(self.down(h)))  # (..., H)


def _mlp_output_hook(mlp: torch.nn.Module, inputs, output):
    return mlp.bottleneck(output)


def add_bottleneck_adapters(model: torch.nn.Module, bottleneck_size: int) -> torch.nn.Module:
    """Freeze ``model`` and put a trainable :class:`BottleneckAdapter` after the MLP of every decoder block (as
    ``<layer>.mlp.bottleneck``, applied by a forward hook, so the base weights keep their names)."""
    model.requires_grad_(False)
    layers = model.get_decoder().layers
    hidden = model.config.hidden_size
    for layer in layers:
        adapter = BottleneckAdapter(hidden, bottleneck_size).to(next(layer.mlp.parameters()).dtype)
        layer.mlp.add_module("bottleneck", adapter)
        layer.mlp.register_forward_hook(_mlp_output_hook)
    model.bottleneck_size = bottleneck_size
    return model


def bottleneck_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".bottleneck." in k}


def save_bottleneck(model: torch.nn.Module, folder: Path, base: str) -> None:
    """Write the adapters alone: their weights and ``{"base", "bottleneck_size"}``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(bottleneck_state(model), str(folder / BOTTLENECK_WEIGHTS))
    (folder / BOTTLENECK_CONFIG).write_text(json.dumps({"base": base, "bottleneck_size": model.bottleneck_size}))


def read_bottleneck_config(folder: Path) -> dict:
    """``{"base": <model name or path>, "bottleneck_size": int}`` of a saved adapter folder."""
    return json.loads((Path(folder) / BOTTLENECK_CONFIG).read_text())


def load_bottleneck(base: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """``base`` (the model named in the folder's config, loaded by the caller) with the saved adapters added and
    their weights loaded."""
    from safetensors.torch import load_file

    config = read_bottleneck_config(folder)
    model = add_bottleneck_adapters(base, config["bottleneck_size"])
    missing = model.load_state_dict(load_file(str(Path(folder) / BOTTLENECK_WEIGHTS)), strict=False)
    if missing.unexpected_keys or any(".bottleneck." in k for k in missing.missing_keys):
        raise ValueError(f"{folder}: adapter weights do not fit {config['base']}")
    return model
