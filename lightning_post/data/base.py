"""What every data module shares: the tokenizer, seeded loaders, and the resumable training loader."""

from __future__ import annotations

import abc
import math
import random
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_post.data.sampling import resumable_train_loader
from lightning_post.errors import ConfigError, UserError
from lightning_post.models.loading import load_tokenizer


class Rows:
    """Map-style dataset over prepared examples (rows, pairs, ...)."""

    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


class PostDataModule(L.LightningDataModule, abc.ABC):
    """Base of the data modules: subclasses fill ``self.splits`` in ``setup`` and define ``collate``.

    Expects hyperparameters ``batch_size``, ``eval_batch_size``, ``shuffle``, ``seed`` and ``num_workers``.
    """

    def __init__(self, tokenizer: str):
        super().__init__()
        self.tokenizer_name = tokenizer
        self.tok = None
        self.splits: dict[str, Rows] = {}
        self.safety_report: dict = {}

    #: smallest ``max_length`` that holds a chat template's markers, a short prompt and an answer
    MIN_LENGTH = 16

    def check_settings(self) -> None:
        """Refuse knobs that cannot work, named as in the YAML, at construction (before the MLflow run exists):
        subclasses call it after ``save_hyperparameters``. A file list that names a missing file is refused too
        (``null`` = the bundled default)."""
        from pathlib import Path


        hp = self.hparams
        rules = {"batch_size": (1, "an optimizer step needs rows"), "eval_batch_size": (1, None),
                 "generation_batch_size": (1, None), "num_workers": (0, None), "max_prompt_length": (1, None),
                 "max_length": (self.MIN_LENGTH, "a shorter row cannot hold a chat template, a prompt and an answer"),
                 "val_size": (0, None)}
        for name, (low, why) in rules.items():
            value = hp.get(name)
            if value is not None and value < low:
                raise ConfigError(f"data.{name}", f"must be >= {low}, got {value}" + (f" ({why})" if why else ""))
        fraction = hp.get("val_fraction")
        if fraction is not None and not 0 <= fraction < 1:
            raise ConfigError("data.val_fraction", f"must be in [0, 1) (a share of the training records), got {fraction}")
        if hp.get("max_prompt_length") and hp.get("max_length") and hp["max_prompt_length"] >= hp["max_length"]:
            raise ConfigError("data.max_prompt_length", f"must be below max_length ({hp['max_length']}) to leave room "
                                                        f"for the reply, got {hp['max_prompt_length']}")
        for name, value in hp.items():
            if not name.endswith("_files") or value is None:
                continue
            for path in [value] if isinstance(value, str) else value:
                if isinstance(path, str) and not Path(path).exists():
                    raise ConfigError(f"data.{name}", f"file {path} does not exist")

    def data_sources(self) -> list[tuple[str, str]]:
        """``(split, path)`` of every data file this module reads, from its ``<split>_files`` settings and its tasks'
        ``files`` (logged as the run's MLflow datasets). A null ``train_files``/``prompt_files`` is the bundled file;
        a null ``val_files`` holds validation out of the training files, a null ``test_files`` tests on those; a
        module with ``prompt_files`` (CAI) trains on what it generates from them."""
        from lightning_post.data.instruction import InstructionDataModule, default_instruction_file
        from lightning_post.data.preference import default_preference_file

        def listed(value) -> list[str]:
            return [value] if isinstance(value, str) else [str(v) for v in value or []]

        files = {name.removesuffix("_files"): listed(value) for name, value in self.hparams.items()
                 if name.endswith("_files")}
        if "prompt" in files:
            files = {split: paths for split, paths in files.items() if paths or split == "prompt"}
            files["prompt"] = files["prompt"] or [default_preference_file()]
        elif "train" in files and not files["train"]:
            files["train"] = [default_instruction_file() if isinstance(self, InstructionDataModule)
                              else default_preference_file()]
        if "val" in files and not files["val"]:
            files["val"] = files.get("train", [])
        if "test" in files and not files["test"]:
            files["test"] = files.get("val", [])
        for task in getattr(self, "tasks", None) or []:
            files.setdefault("train", []).extend(listed(getattr(task, "files", None)))
            files.setdefault("val", []).extend(listed(getattr(task, "files", None)))  # val_size held out per task
        return [(split, path) for split, paths in files.items() for path in paths]

    def safety_filtered(self, splits: dict) -> dict:
        """``splits`` (split -> normalised records) after the ``safety_filter`` hyperparameter, if set; the report
        (counts by reason, a sample of removed records) is kept in ``self.safety_report`` for MLflow."""
        from lightning_post.data.safety import SafetyFilter, filter_splits

        cfg = getattr(self.hparams, "safety_filter", None)
        if cfg is None:
            return splits
        splits, self.safety_report = filter_splits(splits, cfg if isinstance(cfg, SafetyFilter) else SafetyFilter(**cfg))
        if not splits.get("train"):
            raise UserError("the safety filter removed every training record; see the log for the reasons")
        return splits

    def _tokenizer(self):
        if self.tok is None:
            self.tok = load_tokenizer(self.tokenizer_name)
        return self.tok

    @abc.abstractmethod
    def collate(self, examples: list) -> dict:
        """Turn a list of prepared examples into a batch of tensors."""

    def _generator(self) -> torch.Generator:
        # A loader without its own generator draws its worker seed from the global RNG each time it is iterated,
        # which would shift dropout masks between a resumed and an uninterrupted run.
        return torch.Generator().manual_seed(self.hparams.seed)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return resumable_train_loader(
            self.splits["train"], self.trainer, hp.batch_size, hp.shuffle, hp.seed, self.collate, hp.num_workers,
            self._generator(),
        )

    def eval_loader(self, split: str) -> DataLoader:
        """Examples of ``split`` in file order."""
        return DataLoader(
            self.splits[split], batch_size=self.hparams.eval_batch_size, shuffle=False, collate_fn=self.collate,
            num_workers=self.hparams.num_workers, generator=self._generator(),
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test")


def count_records(path: str) -> dict:
    """``{"rows": N}``: the records of a data file (JSON/JSONL(.gz) without parsing each one, parquet and saved
    dataset folders through ``datasets``); ``{}`` where it cannot be read."""
    from pathlib import Path

    from lightning_post.data.records import raw_records, read_lines

    try:
        name = Path(path).name.removesuffix(".gz")
        if Path(path).is_file() and name.endswith((".json", ".jsonl")):
            lines = read_lines(path)
            if not "".join(lines[:1]).lstrip().startswith("["):
                return {"rows": sum(1 for line in lines if line.strip())}
        return {"rows": len(raw_records(path, lambda record, where: None))}
    except Exception as e:  # counting is a report, never a reason to stop a run
        import logging

        logging.getLogger(__name__).debug("could not count the records of %s: %s", path, e)
        return {}


def hold_out(records: list, seed: int, fraction: float, size: Optional[int] = None) -> tuple[list, list]:
    """Split ``records`` into (train, held-out) by a seeded shuffle: ``size`` records, or ``ceil(fraction * n)``
    (at least 1 when ``fraction > 0``); both keep file order.

    >>> hold_out(list("abcdef"), seed=0, fraction=0.34)
    (['a', 'd', 'f'], ['b', 'c', 'e'])
    """
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = size if size is not None else (max(1, math.ceil(len(records) * fraction)) if fraction > 0 else 0)
    if n >= len(records) and records:
        raise UserError(f"holding out {n} of {len(records)} records leaves nothing to train on")
    held = set(order[:n])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]
