"""InstructionDataModule: instruction / chat data -> tokenised, label-masked, optionally packed batches."""

from __future__ import annotations

import logging
from typing import Optional

from tqdm.auto import tqdm

from lightning_post.data.base import PostDataModule, Rows, hold_out
from lightning_post.data.collate import collate_rows, pack_greedy
from lightning_post.errors import UserError
from lightning_post.records.files import Files, as_list, default_instruction_file
from lightning_post.records.instruction import load_instruction_records
from lightning_post.records.templates import check_template, to_segments
from lightning_post.records.tokenize import TokenizeStats, Tokenized, encode_prompt, tokenize_segments, truncate

log = logging.getLogger(__name__)

class InstructionDataModule(PostDataModule):
    """Instruction tuning data: files -> validated records -> template -> tokens with response-only labels.

    Every file is validated completely in ``setup`` before training starts; a bad record stops the run with its
    file, line and field, and nothing (MLflow run, checkpoint) is written.
    """

    def __init__(
        self,
        train_files: Files = None,
        val_files: Files = None,
        test_files: Files = None,
        val_fraction: float = 0.1,
        truncation: str = "right",
        packing: bool = False,
        **kwargs,
    ):
        """
        Args:
            train_files: JSON/JSONL/parquet files or saved dataset folders; ``None`` = the bundled dataset.
            val_files: validation files; ``None`` = hold out ``val_fraction`` of the training records.
            test_files: test files for ``lightning-post test``; ``None`` = the validation split.
            val_fraction: share of training records held out for validation when ``val_files`` is not given.
            truncation: ``right`` (keep the first ``max_length`` tokens) or ``drop`` (drop longer examples).
            packing: pack several examples per row; they cannot attend to each other (4D segment mask).
            **kwargs: the knobs every data module shares (:class:`~lightning_post.data.base.PostDataModule`).
        """
        super().__init__(**kwargs)
        check_template(self.hparams.template)
        if truncation not in ("right", "drop"):
            raise UserError(f"unknown truncation {truncation!r}; choose 'right' or 'drop'")
        self.stats: dict[str, TokenizeStats] = {}

    def bundled_file(self) -> str:
        return default_instruction_file()

    # ---- preparation -------------------------------------------------------------------------------------------
    def encode(self, records: list[dict], split: str) -> list[Tokenized]:
        """Format, tokenise and truncate records; counts go to ``self.stats[split]``."""
        hp, tok = self.hparams, self._tokenizer()
        stats = TokenizeStats(examples=len(records))
        out = []
        for i, rec in enumerate(tqdm(records, desc=f"tokenising {split}", disable=len(records) < 1000)):
            ex = tokenize_segments(to_segments(rec, hp.template, tok), tok, template_is_chat=hp.template == "chat")
            was_long = len(ex.input_ids) > hp.max_length
            ex = truncate(ex, hp.max_length, hp.truncation)
            if ex is None:
                stats.dropped += 1
                stats.dropped_where.append(i)
                continue
            stats.truncated += was_long
            stats.tokens += len(ex.input_ids)
            stats.response_tokens += sum(label != -100 for label in ex.labels)
            out.append(ex)
        if stats.truncated or stats.dropped:
            log.warning(
                "%s: %d of %d examples truncated, %d dropped (max_length=%d, truncation=%s)",
                split, stats.truncated, stats.examples, stats.dropped, hp.max_length, hp.truncation,
            )
        self.stats[split] = stats
        return out

    def _rows(self, examples: list[Tokenized]) -> Rows:
        if not self.hparams.packing:
            return Rows([[e] for e in examples])
        groups = pack_greedy([len(e.input_ids) for e in examples], self.hparams.max_length)
        return Rows([[examples[i] for i in g] for g in groups])

    def _read_all(self) -> dict[str, Optional[list[dict]]]:
        """Read and validate every file (train, val, test); the first bad record raises ``DataError``."""
        hp = self.hparams
        train = load_instruction_records(as_list(hp.train_files) or [self.bundled_file()])
        if hp.val_files is not None:
            val = load_instruction_records(as_list(hp.val_files))
        else:
            train, val = hold_out(train, hp.seed, hp.val_fraction)
        test = load_instruction_records(as_list(hp.test_files)) if hp.test_files is not None else None
        return self.safety_filtered({"train": train, "val": val, "test": test})

    def prepare_data(self) -> None:
        # Lightning calls this before it creates the MLflow run and any folder: validating here means a bad file
        # stops the run with nothing written.
        self._records = self._read_all()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        records = getattr(self, "_records", None) or self._read_all()  # other ranks read for themselves
        self._records = None
        self.splits["train"] = self._rows(self.encode(records["train"], "train"))
        self.splits["val"] = Rows([[e] for e in self.encode(records["val"], "val")])
        test = records["test"]
        self.splits["test"] = Rows([[e] for e in self.encode(test, "test")]) if test is not None else self.splits["val"]
        if not self.splits["train"].rows:
            raise UserError("no training example is left after truncation; raise data.max_length")

    # ---- loaders -----------------------------------------------------------------------------------------------
    def collate(self, rows):
        return collate_rows(rows, self._tokenizer().pad_token_id)

    # ---- prompts for generation --------------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a generation prompt for a bare request, formatted exactly like training prompts."""
        return encode_prompt(text, self.hparams.template, self._tokenizer())
