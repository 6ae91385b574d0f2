"""MultiTaskDataModule: several named instruction tasks mixed by weights, examples-proportional rates with a cap, or
temperature sampling, under the ``mixed``, ``curriculum`` or ``alternating`` strategy.

    data:
      class_path: lightning_post.MultiTaskDataModule
      init_args:
        tasks:
          - {name: ag_news, files: ../shared/data/multitask/ag_news_classify.jsonl, exact_match: true}
          - {name: xsum, files: ../shared/data/multitask/xsum_summarize_DOC.jsonl, weight: 2.0}
        mixing: temperature        # weights | proportional | temperature
        temperature: 2.0
        cap: null                  # T5's K: sizes above it count as K

Batches carry ``task`` (the task index of each row), so :class:`~lightning_post.methods.sft.SFTModule` logs the
validation loss per task, exact-match accuracy for ``exact_match`` tasks, and the realised task shares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch
from torch.utils.data import DataLoader

from lightning_post.data.base import NOT_TAKEN, PostDataModule, Rows, hold_out
from lightning_post.data.collate import collate_rows
from lightning_post.data.mixing import MIXINGS, STRATEGIES, CurriculumStage, TaskOrder, mixing_rates
from lightning_post.data.sampling import ResumableLoader, ResumableSampler, completed_batches_in_epoch
from lightning_post.errors import UserError
from lightning_post.records.instruction import load_instruction_records
from lightning_post.records.templates import check_template, to_segments
from lightning_post.records.tokenize import Tokenized, encode_prompt, tokenize_segments, truncate_prompt_middle

log = logging.getLogger(__name__)


@dataclass
class TaskConfig:
    """One task of the mixture."""

    name: str
    """Name used in metric names (``val/<name>/loss``)."""
    files: Union[str, list[str]]
    """Its files (any instruction layout: prompt/completion, instruction/response, messages)."""
    weight: float = 1.0
    """Multiplies the task's rate (the whole rate with ``mixing: weights``)."""
    template: Optional[str] = None
    """Prompt template of this task (``null`` = the module's ``template``)."""
    exact_match: bool = False
    """A classification task: validation also generates answers and scores exact match with the reference."""
    max_examples: Optional[int] = None
    """Use at most this many records of the task (file order), before holding out validation."""


@dataclass
class TaskExample:
    """A tokenised example and the task it belongs to."""

    tokens: Tokenized
    task: int


class MultiTaskSampler(ResumableSampler):
    """Indices of a :class:`~lightning_post.data.mixing.TaskOrder`, batch after batch, as a ``DistributedSampler``
    (so Lightning keeps it): on ``W`` processes each global batch of ``W x batch_size`` draws is split by rank."""

    def __init__(self, order: TaskOrder, offsets: list[int], batches: int, num_replicas: int, rank: int, seed: int,
                 batch_size: int):
        self.order, self.offsets, self.num_batches = order, offsets, batches
        super().__init__(range(offsets[-1]), num_replicas, rank, shuffle=False, seed=seed, batch_size=batch_size)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        draws = self.order.batches(self.num_batches, self.epoch)  # global batches
        indices = []
        for batch in draws:
            mine = batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            indices += [self.offsets[t] + i for t, i in mine]
        skip, self.skip_batches = self.skip_batches * self.batch_size, 0
        return iter(indices[skip:])


class MultiTaskDataModule(PostDataModule):
    """Named instruction tasks, each with its files, template and weight, mixed into one training stream."""

    def __init__(
        self,
        tasks: list[TaskConfig],
        mixing: str = "temperature",
        temperature: float = 1.0,
        cap: Optional[int] = None,
        strategy: str = "mixed",
        curriculum: Optional[list[CurriculumStage]] = None,
        batches_per_epoch: Optional[int] = None,
        val_size: int = 16,
        max_exact_match: int = 32,
        strip_suffix: Optional[str] = "<|endoftext|>",
        **kwargs,
    ):
        """
        Args:
            tasks: the tasks (``name``, ``files``, ``weight``, ``template``, ``exact_match``, ``max_examples``).
            mixing: ``weights`` (rates = the weights), ``proportional`` (rate ∝ weight x min(n, cap)) or
                ``temperature`` (rate ∝ weight x min(n, cap) ** (1 / temperature)).
            temperature: T of temperature mixing: 1 = proportional to size, larger = closer to uniform.
            cap: T5's K: a task larger than this counts as this size (``null`` = no cap).
            strategy: ``mixed`` (every example drawn by the rates), ``curriculum`` (stages in order, each with its
                own task weights and number of batches) or ``alternating`` (whole batches per task, in turn).
            curriculum: the stages of ``strategy: curriculum``: ``[{batches: N, weights: {task: w}}, ...]``; a
                stage's rates are the mixing rates with its weights; the last stage runs to the end.
            batches_per_epoch: training batches per epoch (``null`` = training examples / batch size).
            val_size: validation examples held out per task (never trained on).
            max_exact_match: validation examples per exact-match task that are answered by generation.
            strip_suffix: remove this text from the end of responses (the T0 files end completions in
                ``<|endoftext|>``; the template adds the model's own end token). ``null`` keeps responses.
            **kwargs: the knobs every data module shares (:class:`~lightning_post.data.base.PostDataModule`);
                ``template`` is that of the tasks that name none, and a longer example than ``max_length`` loses
                the middle of its prompt.
        """
        # the mixture decides the order of the training rows, and the tasks' files are not filtered
        super().__init__(shuffle=NOT_TAKEN, safety_filter=NOT_TAKEN, **kwargs)
        template = self.hparams.template
        self.tasks = [TaskConfig(**t) if isinstance(t, dict) else t for t in tasks]
        self.stages = [CurriculumStage(**s) if isinstance(s, dict) else s for s in curriculum or []]
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise UserError(f"tasks need distinct names, got {names}")
        if mixing not in MIXINGS or strategy not in STRATEGIES:
            raise UserError(f"mixing must be one of {list(MIXINGS)} and strategy one of {list(STRATEGIES)}")
        if strategy == "curriculum":
            if not self.stages:
                raise UserError("strategy: curriculum needs curriculum stages")
            for s in self.stages:
                unknown = set(s.weights) - set(names)
                if unknown:
                    raise UserError(f"curriculum stage names unknown tasks {sorted(unknown)}; tasks are {names}")
        for t in self.tasks:
            check_template(t.template or template)
        self.sizes: list[int] = []
        self.rates: list[float] = []
        self.exact_match_sets: dict[int, list[tuple[list[int], str]]] = {}

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    # ---- preparation -------------------------------------------------------------------------------------------
    def _read(self) -> list[tuple[list[dict], list[dict]]]:
        """(train, val) records of every task; the first bad record raises ``DataError``."""
        hp, out = self.hparams, []
        for task in self.tasks:
            records = load_instruction_records([task.files] if isinstance(task.files, str) else task.files)
            if task.max_examples is not None:
                records = records[: task.max_examples]
            if hp.strip_suffix:
                for r in records:
                    if "response" in r and r["response"].endswith(hp.strip_suffix):
                        r["response"] = r["response"][: -len(hp.strip_suffix)].rstrip()
            out.append(hold_out(records, hp.seed, 0.0, hp.val_size))
        return out

    def prepare_data(self) -> None:
        self._records = self._read()  # validated before any MLflow run or folder exists

    def _encode(self, records: list[dict], task: int) -> list[TaskExample]:
        hp, tok = self.hparams, self._tokenizer()
        template = self.tasks[task].template or hp.template
        out, dropped = [], 0
        for rec in records:
            ex = tokenize_segments(to_segments(rec, template, tok), tok, template_is_chat=template == "chat")
            ex = truncate_prompt_middle(ex, hp.max_length)  # long documents lose their middle, not the answer
            if ex is None:
                dropped += 1
                continue
            out.append(TaskExample(ex, task))
        if dropped:
            log.warning("task %s: %d examples dropped (no response token fits max_length=%d)",
                        self.tasks[task].name, dropped, hp.max_length)
        return out

    def stage_rates(self) -> list[list[float]]:
        """Rates of each curriculum stage: the mixing rates with the stage's weights (0 for tasks it leaves out)."""
        hp = self.hparams
        return [mixing_rates(self.sizes, [s.weights.get(n, 0.0) for n in self.task_names], hp.mixing,
                             hp.temperature, hp.cap) for s in self.stages]

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        records = getattr(self, "_records", None) or self._read()
        self._records = None
        train = [self._encode(tr, t) for t, (tr, _) in enumerate(records)]
        val = [self._encode(va, t) for t, (_, va) in enumerate(records)]
        self.sizes = [len(x) for x in train]
        self.rates = mixing_rates(self.sizes, [t.weight for t in self.tasks], hp.mixing, hp.temperature, hp.cap)
        self.splits["train"] = Rows([ex for task in train for ex in task])
        self.splits["val"] = Rows([ex for task in val for ex in task])
        self.splits["test"] = self.splits["val"]
        self.exact_match_sets = {}
        for t, (_, va) in enumerate(records):
            if self.tasks[t].exact_match:
                self.exact_match_sets[t] = [(self._prompt_ids(r, t), _reference(r)) for r in va[: hp.max_exact_match]]
        log.info("tasks %s: %s training examples, rates %s", self.task_names, self.sizes,
                 [round(r, 4) for r in self.rates])

    def setup_metrics(self) -> dict[str, float]:
        """The planned mixture, logged once: ``data/task_rate/<task>`` and ``data/task_examples/<task>``."""
        out = {f"data/task_rate/{n}": r for n, r in zip(self.task_names, self.rates)}
        out.update({f"data/task_examples/{n}": float(k) for n, k in zip(self.task_names, self.sizes)})
        return out

    def _prompt_ids(self, record: dict, task: int) -> list[int]:
        text = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        ids = encode_prompt(text, self.tasks[task].template or self.hparams.template, self._tokenizer())
        limit = self.hparams.max_length - 16  # the same middle cut as training, leaving room for the answer
        return ids if len(ids) <= limit else ids[:16] + ids[len(ids) - (limit - 16):]

    def task_order(self) -> TaskOrder:
        hp = self.hparams
        world = self.trainer.world_size if self.trainer else 1
        stages = self.stage_rates() if hp.strategy == "curriculum" else None
        return TaskOrder(self.sizes, self.rates, hp.batch_size * world, hp.seed, hp.strategy, stages,
                         [s.batches for s in self.stages] if stages else None)

    # ---- loaders -----------------------------------------------------------------------------------------------
    def collate(self, examples: list[TaskExample]) -> dict:
        batch = collate_rows([[e.tokens] for e in examples], self._tokenizer().pad_token_id)
        batch["task"] = torch.tensor([e.task for e in examples])
        return batch

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        offsets = [0]
        for n in self.sizes:
            offsets.append(offsets[-1] + n)
        batches = hp.batches_per_epoch or max(1, offsets[-1] // hp.batch_size)
        sampler = MultiTaskSampler(self.task_order(), offsets, batches, self.trainer.world_size if self.trainer else 1,
                                   self.trainer.global_rank if self.trainer else 0, hp.seed, hp.batch_size)
        loader = ResumableLoader(self.splits["train"], batch_size=hp.batch_size, sampler=sampler,
                                 collate_fn=self.collate, num_workers=hp.num_workers, generator=self._generator())
        sampler.skip_batches = completed_batches_in_epoch(self.trainer, len(loader))
        return loader


def _reference(record: dict) -> str:
    if "messages" in record:
        return [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]
    return record["response"]


def exact_match(prediction: str, reference: str) -> bool:
    """Whether an answer equals the reference, ignoring case, surrounding space and a final full stop.

    >>> exact_match(" Business.", "business")
    True
    """
    def norm(s: str) -> str:
        return " ".join(s.strip().rstrip(".").lower().split())

    return norm(prediction) == norm(reference)
