"""Export after ``fit``: the model in Hugging Face format (LoRA merged) and, under PEFT, the adapter in PEFT format."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import lightning as L

from lightning_post.callbacks.checkpoint import run_dir  # noqa: F401  (also importable from here)
from lightning_post.outputs import check_output_dir, replace_subfolder
from lightning_post.tracking import mlflow_logger, set_tags

log = logging.getLogger(__name__)


def export_model(module: L.LightningModule, out: Path, merge: bool = True, adapter: bool = True) -> dict[str, str]:
    """Write ``out/model`` (full weights, adapters merged) and ``out/adapter`` (PEFT format) with the tokenizer.
    Adapters that cannot be merged (prefix tuning, bottleneck) are exported as ``out/adapter`` only; a bottleneck
    folder loads, base and adapters, wherever a model path is accepted.

    Each folder is written under a temporary name and renamed into place, so a crash never leaves half an export;
    an existing ``model`` or ``adapter`` folder is replaced only when an earlier export wrote it (a marker in ``out``).
    """
    from lightning_post.models.peft import can_merge, save_bottleneck

    model, tokenizer = module.model, module.tokenizer
    is_peft = hasattr(model, "peft_config")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def _write(name: str, save) -> None:
        def save_with_tokenizer(d: Path) -> None:
            save(d)
            tokenizer.save_pretrained(d)

        written[name] = str(replace_subfolder(out, name, save_with_tokenizer, "export").resolve())

    if hasattr(model, "bottleneck_size"):  # our adapters: saved alone, loaded on their base by load_causal_lm
        _write("adapter", lambda d: save_bottleneck(model, d, module.hparams.model_name_or_path))
        return written
    if is_peft and adapter:
        def save_adapter(d: Path) -> None:
            model.save_pretrained(d)
            portable_base(d, module.hparams.model_name_or_path)

        _write("adapter", save_adapter)
    if is_peft and not can_merge(model):
        log.info("prefix tuning does not fold into the weights: exported the adapter only")
        return written
    if merge or not is_peft:
        def save_merged(d: Path) -> None:
            full = copy.deepcopy(model).merge_and_unload() if is_peft else model
            full.save_pretrained(d)

        _write("model", save_merged)
    return written


def portable_base(adapter_dir: Path, model_name_or_path: str) -> None:
    """Name the adapter's base model so that it loads on another machine: PEFT records the folder it loaded the base
    from, which for an alias is this machine's cache (``~/.cache/lightning-post/models/...``); an alias with a hub id
    is recorded as that id (``HuggingFaceTB/SmolLM2-135M-Instruct``), which resolves to the hub's weights online and
    to the converted copy offline (:func:`~lightning_post.models.loading.register_in_hub_cache`). Other bases (a
    folder, a hub id) are recorded as given."""
    import json

    from lightning_post.models.loading import hub_id, resolve_model_path

    base = hub_id(model_name_or_path) or model_name_or_path
    local = resolve_model_path(model_name_or_path)
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = adapter_dir / "README.md"  # PEFT's model card names the base too
    if card.exists() and local != base:
        card.write_text(card.read_text(encoding="utf-8").replace(local, base), encoding="utf-8")


def unsharded_copy(module: L.LightningModule) -> Optional[SimpleNamespace]:
    """A whole, unsharded copy of an FSDP2-sharded module's model on rank 0 (``None`` elsewhere), as
    :func:`export_model` takes it: the gathered weights loaded into a freshly built model. Every process must call it.
    """
    from lightning_post.models.peft import apply_peft
    from lightning_post.strategies import gather_full_state

    state = gather_full_state(module.model)
    if not module.trainer.is_global_zero:
        return None
    plain = apply_peft(module.load_backbone(), module.peft, module.peft_task)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    # a tied LM head is the embedding itself (the sharded model reads it through TiedHead, which holds no weight)
    head = plain.get_output_embeddings() if hasattr(plain, "get_output_embeddings") else None
    tied = {n for n, p in plain.named_parameters(remove_duplicate=False) if head is not None and p is head.weight}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"export: the gathered weights do not fit the model (missing {sorted(set(missing) - tied)},"
                           f" unexpected {sorted(unexpected)})")
    return SimpleNamespace(model=plain, tokenizer=module.tokenizer, hparams=module.hparams)


class ExportModel(L.Callback):
    """Export the trained policy at the end of ``fit`` and record where on the MLflow run (tag ``export_dir``)."""

    def __init__(self, dirpath: Optional[str] = None, merge_adapters: bool = True, save_adapter: bool = True,
                 enabled: bool = True, log_model: bool = True):
        """
        Args:
            dirpath: where to export; ``None`` = ``<run folder>/export`` next to the checkpoints.
            merge_adapters: also write the full model with LoRA merged into the base weights.
            save_adapter: also write the adapter alone in PEFT format (PEFT runs only).
            enabled: set to false to skip the export.
            log_model: also log the export on the MLflow run as an MLflow model (``mlflow.pyfunc``: answers
                messages, or scores replies for a reward model), so the MLflow UI lists it; an adapter is logged
                with its base model's name rather than merged weights.
        """
        self.dirpath, self.merge_adapters, self.save_adapter, self.enabled = dirpath, merge_adapters, save_adapter, enabled
        self.log_model = log_model
        if enabled and dirpath:  # before training: a folder of someone else's is refused now, not after the fit
            check_output_dir(dirpath, "export", setting="export.dirpath")
        self.written: dict[str, str] = {}
        self.model_id: Optional[str] = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        source = unsharded_copy(pl_module) if getattr(pl_module, "sharded", False) else pl_module  # collective
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath) if self.dirpath else run_dir(trainer) / "export"
        self.written = export_model(source, out, self.merge_adapters, self.save_adapter)
        log.info("exported %s", self.written)
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        set_tags(logger, {"export_dir": str(out.resolve()), **{f"export_{k}": v for k, v in self.written.items()}})
        if self.log_model and self.written:
            from lightning_post.serving import log_exported_model

            task = "score" if getattr(pl_module, "method", "") == "reward" else "chat"
            self.model_id = log_exported_model(logger._tracking_uri, logger.run_id, self.written,
                                               pl_module.hparams.model_name_or_path, task)
            set_tags(logger, {"mlflow_model_id": self.model_id})
