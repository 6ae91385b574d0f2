"""What every data module shares: the knobs declared once, the tokenizer, seeded loaders, the resumable training
loader, the safety filter, and what a data module adds to its run's MLflow record (:meth:`PostDataModule.run_record`).
"""

from __future__ import annotations

import abc
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_post.data.sampling import resumable_train_loader
from lightning_post.errors import ConfigError, UserError
from lightning_post.models.loading import DEFAULT_MODEL, load_tokenizer
from lightning_post.outputs import finite_json
from lightning_post.records.files import count_records, default_preference_file
from lightning_post.safety.filter import SafetyFilter, filter_splits, safety_metrics


class _NotTaken:
    def __repr__(self) -> str:
        return "NOT_TAKEN"


#: what a data module passes to ``super().__init__`` for a shared knob it has no use for: the knob is then neither
#: one of its arguments (jsonargparse leaves out what the ``super().__init__`` call sets) nor a hyperparameter
NOT_TAKEN = _NotTaken()

#: splits a stage does not read
UNUSED_SPLITS = {"fit": {"test"}, "validate": {"train", "test"}, "test": {"train", "val"}}


@dataclass
class RunRecord:
    """What a data module adds to its run's MLflow record when the run starts (:meth:`PostDataModule.run_record`);
    ``lightning_post.trainer_cli.MLflowConfig`` writes it."""

    params: dict[str, float] = field(default_factory=dict)
    """Figures fixed at setup (``data/train_examples``, the quality gate's, the safety filter's removals), logged as
    params: constants of the run, not curves."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Artifact path -> text (``safety_filter/report.json``)."""
    datasets: list[tuple[str, str, dict]] = field(default_factory=list)
    """``(split, file, {"rows": N})`` of every data file the stage reads: the run's MLflow dataset inputs."""


class Rows:
    """Map-style dataset over prepared examples (rows, pairs, ...)."""

    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


class PostDataModule(L.LightningDataModule, abc.ABC):
    """Base of the data modules. The knobs every data module shares are declared here, once: a data module takes its
    own arguments and ``**kwargs``, which it passes on to ``super().__init__``; jsonargparse follows them here, so
    ``--help``, ``--print_config`` and the config reference list them among the data module's own, with these
    descriptions. A data module with no use for one of them passes it as :data:`NOT_TAKEN`.

    Subclasses fill ``self.splits`` in ``setup`` and define ``collate``; what they add to the run's MLflow record is
    :meth:`run_record` (the counts in ``self.stats``, :meth:`setup_metrics`, the safety filter's report, the records
    left out as ``self.invalid``, the files of :meth:`data_sources`).
    """

    def __init__(
        self,
        template: str = "chat",
        tokenizer: str = DEFAULT_MODEL,
        max_length: int = 512,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        safety_filter: Optional[SafetyFilter] = None,
    ):
        """
        Args:
            template: ``chat`` (the tokenizer's chat template) or a named layout: ``basic``, ``with_input``,
                ``conversational``, ``alpaca``, ``raw`` (``raw`` keeps a record's own text, e.g. HH-RLHF's
                ``Human:/Assistant:`` dialogue); records with a non-empty ``input`` use the with-input layout.
            tokenizer: tokenizer name or path (linked to ``model.model_name_or_path`` by the CLI).
            max_length: longest tokenised example (prompt + reply, or a packed row) in tokens; longer ones are
                truncated as the data module says (``truncation``, ``min_prompt_length``).
            batch_size: training records (rows, pairs, examples; prompts per rollout for RL) per optimizer step per
                device, split into micro-batches by the method.
            eval_batch_size: records per validation/test batch.
            shuffle: shuffle the training records each epoch (seeded).
            seed: seed of the held-out validation split and of the shuffling (or of the task draws).
            num_workers: DataLoader worker processes.
            safety_filter: rules and classifiers that remove unsafe records from every split before
                tokenising, with counts by reason and a sample in MLflow (see
                :class:`~lightning_post.safety.filter.SafetyFilter`; ``null`` = keep everything).
        """
        super().__init__()
        # every argument of the data module's __init__ chain, from the frames above: the shared knobs here and the
        # data module's own (Lightning collects them); a knob the data module does not take is left out
        self.save_hyperparameters(ignore=[name for name, value in locals().items() if value is NOT_TAKEN])
        self.tokenizer_name = tokenizer
        self.tok = None
        self.splits: dict[str, Rows] = {}
        self.stats: dict = {}  # split -> counts with ``as_metrics(split)`` (TokenizeStats, PairStats)
        self.safety_report: dict = {}
        self.invalid: Optional[list] = None  # records left out as malformed (``skip_invalid``)
        self.check_settings()

    #: smallest ``max_length`` that holds a chat template's markers, a short prompt and an answer
    MIN_LENGTH = 16

    def check_settings(self) -> None:
        """Refuse knobs that cannot work, named as in the YAML, at construction (before the MLflow run exists; run by
        ``__init__``). A file list that names a missing file is refused too (``null`` = the bundled default)."""
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
        def listed(value) -> list[str]:
            return [value] if isinstance(value, str) else [str(v) for v in value or []]

        files = {name.removesuffix("_files"): listed(value) for name, value in self.hparams.items()
                 if name.endswith("_files")}
        if "prompt" in files:
            files = {split: paths for split, paths in files.items() if paths or split == "prompt"}
            files["prompt"] = files["prompt"] or [default_preference_file()]
        elif "train" in files and not files["train"]:
            files["train"] = [self.bundled_file()]
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
        cfg = getattr(self.hparams, "safety_filter", None)
        if cfg is None:
            return splits
        splits, self.safety_report = filter_splits(splits, cfg if isinstance(cfg, SafetyFilter) else SafetyFilter(**cfg))
        if not splits.get("train"):
            raise UserError("the safety filter removed every training record; see the log for the reasons")
        return splits

    def bundled_file(self) -> str:
        """The bundled data file read when ``train_files`` is null: the preference pairs (their prompts, their
        replies as unpaired examples), or the instructions of SFT data."""
        return default_preference_file()

    def setup_metrics(self) -> dict[str, float]:
        """Figures of the data fixed at setup beyond the counts in ``self.stats`` (the quality gate's, the task
        mixture's): none here."""
        return {}

    def run_record(self, stage: str) -> RunRecord:
        """What this data module adds to the run's MLflow record at the start of ``stage`` (``fit``, ``validate``,
        ``test``, ``predict``): the counts in ``self.stats`` and :meth:`setup_metrics` as params, the safety filter's
        counts by reason (params) and its report (artifact ``safety_filter/report.json``), the number of records
        left out as malformed (``data/invalid_pairs``, where the module keeps them), and the files of the splits the
        stage reads as the run's datasets."""
        record = RunRecord()
        record.params = {k: float(v) for split, s in self.stats.items() for k, v in s.as_metrics(split).items()}
        record.params.update(self.setup_metrics())
        if self.safety_report:
            record.params.update(safety_metrics(self.safety_report))
            record.artifacts["safety_filter/report.json"] = json.dumps(
                finite_json(self.safety_report), indent=1, ensure_ascii=False, default=str)
        if self.invalid is not None:
            record.params["data/invalid_pairs"] = float(len(self.invalid))
        sources = [(s, p) for s, p in self.data_sources() if s not in UNUSED_SPLITS.get(stage, ())]
        counts = {p: count_records(p) for p in {p for _, p in sources}}
        record.datasets = [(s, p, counts[p]) for s, p in sources]
        return record

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
