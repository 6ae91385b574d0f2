"""CAIModule: Constitutional AI (Bai et al. 2022) -- the model critiques and revises its own answers against a
written constitution, then learns from the revisions (SL-CAI); optionally it also labels pairs of its answers by the
constitution (AI feedback, RL-CAI) for DPOModule or RewardModule."""

from __future__ import annotations

import logging
from typing import Optional

import torch
from tqdm.auto import tqdm

from lightning_post.cai.constitution import load_constitution, load_few_shot
from lightning_post.cai.loop import ai_feedback, critique_revision
from lightning_post.generation import ChatGenerator
from lightning_post.methods.sft import SFTModule
from lightning_post.tracking import mlflow_logger

log = logging.getLogger(__name__)


class CAIModule(SFTModule):
    """Constitutional AI under LightningCLI.

    ``fit``: 1. generation (before training, on one process): for every prompt of the :class:`CAIDataModule` not yet
    in ``revisions.jsonl``, the critique -> revision loop of :func:`~lightning_post.cai.loop.critique_revision`
    (and, with ``ai_feedback``, the AI-labelled pairs of :func:`~lightning_post.cai.loop.ai_feedback` into
    ``feedback.jsonl``), written batch by batch so an interrupted run resumes where it stopped;
    2. SL-CAI: supervised fine-tuning on each prompt's final revision (the SFT loss, response tokens only);
    3. the generated files are logged to the MLflow run (``cai/``).

    ``predict``: the generation alone, batch by batch (returns the new records).
    """

    supports_sharding = False  # generation on one process / several trained networks: not under FSDP2 yet

    method = "cai"

    def __init__(
        self,
        *args,
        constitution: Optional[str] = None,
        language: str = "en",
        rounds: int = 1,
        principle_choice: str = "sample",
        revision_threshold: float = 0.5,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_prompt_length: int = 1024,
        ai_feedback: bool = False,
        feedback_temperature: float = 1.0,
        few_shot: Optional[str] = None,
        few_shot_examples: Optional[int] = 2,
        seed: int = 0,
        logits_chunk_size: int = 1024,
        **kwargs,
    ):
        """
        Args:
            logits_chunk_size: response positions whose logits are computed at once in the SFT loss.
            constitution: YAML constitution or the paper's JSON of critique/revision requests (``null`` = the
                bundled five principles).
            language: language of the constitution's texts (the bundled one has ``en`` and ``ko``).
            rounds: critique -> revision rounds per prompt (each revises the previous round's answer).
            principle_choice: ``sample`` (one principle drawn per prompt and round, seeded) or ``cycle`` (round r
                uses principle r; ``rounds`` = the number of principles applies every principle in turn).
            revision_threshold: revise when the model's probability of "yes, revise" (normalised over yes/no) is at
                least this.
            max_new_tokens: longest generated answer, critique or revision.
            temperature: sampling temperature of answers, critiques and revisions (0 = greedy).
            top_p: nucleus sampling threshold when sampling.
            max_prompt_length: longer generation prompts keep their last tokens.
            ai_feedback: also write AI-labelled preference pairs (RL-CAI data) to ``feedback.jsonl``.
            feedback_temperature: sampling temperature of the two answers compared by AI feedback.
            few_shot: demonstrations of critique and revision put before each conversation (the paper's
                ``critique_revision_few_shot.json`` or a JSON list of message lists); ``null`` = none.
            few_shot_examples: use the first N demonstrations (``null`` = all).
            seed: seed of the principle draws and of sampling.
        """
        # SL-CAI trains on one task: no gradient surgery, no exact-match validation (given here, so not settings)
        super().__init__(*args, logits_chunk_size=logits_chunk_size, pcgrad=False, task_grad_cosine=False,
                         exact_match_max_new_tokens=16, **kwargs)
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        if principle_choice not in ("sample", "cycle"):
            raise ValueError(f"principle_choice must be 'sample' or 'cycle', got {principle_choice!r}")
        if not 0.0 <= revision_threshold <= 1.0:
            raise ValueError(f"revision_threshold must lie in [0, 1], got {revision_threshold}")
        self.constitution = load_constitution(constitution, language)  # a bad file fails before any work
        self.demos = load_few_shot(few_shot, few_shot_examples) if few_shot else []

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [("rounds", hp.rounds >= 1, ">= 1"), ("revision_threshold", 0 <= hp.revision_threshold <= 1, "in [0, 1]"),
                ("max_new_tokens", hp.max_new_tokens >= 1, ">= 1"), ("temperature", hp.temperature >= 0, ">= 0"),
                ("top_p", 0 < hp.top_p <= 1, "in (0, 1]"), ("max_prompt_length", hp.max_prompt_length >= 1, ">= 1"),
                ("feedback_temperature", hp.feedback_temperature > 0, "> 0"),
                ("few_shot_examples", hp.few_shot_examples is None or hp.few_shot_examples >= 0, ">= 0 or null"),
                ("logits_chunk_size", hp.logits_chunk_size >= 1, ">= 1")]

    # ---- generation ------------------------------------------------------------------------------------------

    def generator(self) -> ChatGenerator:
        hp = self.hparams
        dm = self.trainer.datamodule
        return ChatGenerator(self.model, self.tokenizer, dm.hparams.generation_batch_size, hp.max_new_tokens,
                             hp.temperature, hp.top_p, hp.max_prompt_length)

    def generate_records(self, items: list[dict]) -> list[dict]:
        """Run the loop(s) on the prompt ``items`` that lack records and append them to the data module's files;
        returns the new critique -> revision records."""
        hp, dm = self.hparams, self.trainer.datamodule
        gen = self.generator()
        done = dm.revisions.done_ids()
        todo = [it for it in items if it["id"] not in done]
        records = critique_revision(gen, todo, self.constitution, hp.rounds, hp.principle_choice,
                                    hp.revision_threshold, hp.seed, self.demos) if todo else []
        dm.revisions.append(records)
        if hp.ai_feedback:
            done = dm.feedback.done_ids()
            todo = [it for it in items if it["id"] not in done]
            if todo:
                dm.feedback.append(ai_feedback(gen, todo, self.constitution, hp.feedback_temperature,
                                               hp.principle_choice, hp.seed))
        return records

    def prepare_data(self) -> None:
        """Before fit (one process per node): generate what ``revisions.jsonl`` lacks, then SL-CAI trains on it."""
        self.preflight()  # the model and PEFT checks first
        if self.trainer.state.fn != "fit":
            self.setup_data_now()
            return
        dm = self.trainer.datamodule
        pending = dm.pending(dm.revisions)
        if self.hparams.ai_feedback:
            ids = {it["id"] for it in pending}
            pending += [it for it in dm.pending(dm.feedback) if it["id"] not in ids]
        if not pending:
            log.info("every prompt already has its records in %s", dm.revisions.path.parent)
        else:
            self.configure_model()
            self.model.to(self.trainer.strategy.root_device)
            torch.manual_seed(self.hparams.seed)
            size = dm.hparams.generation_batch_size
            for start in tqdm(range(0, len(pending), size), desc="Constitutional AI", unit="batch"):
                self.generate_records(pending[start: start + size])
            log.info("Constitutional AI: %d prompts generated into %s", len(pending), dm.revisions.path.parent)
        self.setup_data_now()  # SL-CAI's training data: the revisions just written

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        return self.generate_records(batch)

    def _log_outputs(self) -> None:
        logger = mlflow_logger(self.trainer)
        dm = self.trainer.datamodule
        if logger is None or not self.trainer.is_global_zero:
            return
        for store in (dm.revisions, dm.feedback):
            if store.path.exists():
                logger.experiment.log_artifact(logger.run_id, str(store.path), artifact_path="cai")
        records = dm.revisions.read()
        if records:
            revised = sum(r["revised"] for r in records)
            logger.log_metrics({"cai/records": len(records), "cai/revised_fraction": revised / len(records),
                                "cai/p_revise": sum(r["p_revise"] for r in records) / len(records)}, step=0)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._log_outputs()

    def on_predict_end(self) -> None:
        self._log_outputs()
