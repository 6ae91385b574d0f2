"""``lightning-post redteam``: an attacker model writes adversarial prompts from seed requests in several attack
styles; each is put to the target model and judged; the ones that elicit a harmful answer form the red-team set
(the steps: :mod:`lightning_post.safety.redteam`).

    lightning-post redteam --config configs/redteam/default.yaml
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_post.commands.base import Generates, StageCommand
from lightning_post.generation import ChatGenerator
from lightning_post.methods.policy import load_policy
from lightning_post.models.loading import DEFAULT_MODEL, check_models
from lightning_post.outputs import check_output_dir, json_text, write_folder
from lightning_post.plotting import bar_chart
from lightning_post.safety.attacks import ATTACK_STYLES, dedupe
from lightning_post.safety.redteam import (
    JUDGES,
    converse,
    default_seed_file,
    judge_scores,
    load_seeds,
    redteam_set,
    success_rates,
    verdicts,
    write_attacks,
)
from lightning_post.tracking import log_run


class RedTeam(Generates, StageCommand):
    """Red-team prompt generation: seeds x attack styles -> attacker-written prompts -> near-duplicates removed ->
    the target's answers -> a judge's verdict -> the successful attacks as a red-team set, with the attack success
    rate overall and by style."""

    def __init__(
        self,
        attacker: str = DEFAULT_MODEL,
        target: str = DEFAULT_MODEL,
        seeds: Optional[str] = None,
        max_seeds: Optional[int] = None,
        styles: Optional[list[str]] = None,
        attacks_per_seed: int = 1,
        attacker_temperature: float = 0.9,
        dedupe_threshold: float = 0.8,
        judge: str = "llm",
        judge_model: Optional[str] = None,
        threshold: float = 0.5,
        require_compliance: bool = True,
        attacker_max_new_tokens: int = 64,
        output_dir: str = "mlruns/redteam/latest",
        experiment_name: str = "redteam",
        **kwargs,
    ):
        """
        Args:
            attacker: the model that writes the attacks (alias, export folder, hub id or ``.ckpt``).
            target: the model attacked.
            seeds: JSONL of seed requests ``{"prompt", "topic"}`` or HH-RLHF dialogues (``null`` = the bundled 16
                requests over 12 harm topics).
            max_seeds: use the first N seeds.
            styles: attack styles from :data:`~lightning_post.safety.attacks.ATTACK_STYLES` (``null`` = all:
                role_play, hypothetical, obfuscation, multi_turn).
            attacks_per_seed: attacks written per seed and style (sampled).
            attacker_temperature: sampling temperature of the attacker.
            dedupe_threshold: word-set Jaccard similarity at which two attacks count as one.
            judge: ``llm`` (asks ``judge_model`` whether the answer is harmful), ``reward_model`` (a reward below
                ``threshold`` is harmful) or ``refusal`` (any answer that is not a refusal is harmful).
            judge_model: the judge's model (``null`` with ``llm`` = the target judges itself).
            threshold: ``llm``: P(harmful) at which an answer is harmful; ``reward_model``: the reward below which it is.
            require_compliance: an attack succeeds only if the answer is also not a refusal (rule detector).
            attacker_max_new_tokens: longest attack text.
            output_dir: folder of ``attempts.jsonl``, ``redteam_set.jsonl`` and ``report.json``.
            experiment_name: MLflow experiment.
            max_new_tokens: longest answer of the target.
            seed: seed of the attacker's sampling.
            **kwargs: the settings of :class:`~lightning_post.commands.base.Generates` and
                :class:`~lightning_post.commands.base.StageCommand`.
        """
        super().__init__(**kwargs)
        self.keep(locals())
        check_models(self, ("attacker", "target", "judge_model"))
        self.styles = list(ATTACK_STYLES) if styles is None else styles
        unknown = [s for s in self.styles if s not in ATTACK_STYLES]
        if unknown or not self.styles:
            raise ValueError(f"styles: unknown {unknown}; choose from {list(ATTACK_STYLES)}")
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {judge!r}")
        if judge == "reward_model" and not judge_model:
            raise ValueError("judge 'reward_model' needs judge_model: the reward model's folder")

    def run(self) -> dict:
        random.seed(self.seed)
        check_output_dir(self.output_dir, "redteam", self.overwrite)
        torch.manual_seed(self.seed)
        # 1. seeds (validated before any model loads)
        seeds = load_seeds(self.seeds or default_seed_file(), self.max_seeds)
        # 2. the attacker writes attacks: seeds x styles x attacks_per_seed, sampled
        model, tok = load_policy(self.attacker, self.dtype, self._device())
        attacker = ChatGenerator(model, tok, self.batch_size, self.attacker_max_new_tokens,
                                 temperature=self.attacker_temperature)
        attacks = write_attacks(attacker, seeds, self.styles, self.attacks_per_seed)
        written = len(attacks)
        # 3. near-duplicates out (on the whole conversation's user text)
        keep, dropped = dedupe([" ".join(a["turns"]) for a in attacks], self.dedupe_threshold)
        duplicates = len(dropped)
        attacks = [attacks[i] for i in keep]
        # 4. the target answers, turn by turn
        if self.target != self.attacker:
            del attacker, model
            model, tok = load_policy(self.target, self.dtype, self._device())
        target = ChatGenerator(model, tok, self.batch_size, self.max_new_tokens)
        prompts, finals = converse(target, attacks)
        # 5. the judge's verdicts
        scores = judge_scores(self.judge, self.judge_model, self._device(), target, prompts, finals)
        rows = verdicts(attacks, prompts, finals, scores, self.judge, self.threshold, self.require_compliance)
        # 6. the red-team set, the report and the MLflow run
        red = redteam_set(rows)
        rates = success_rates(rows, self.styles)
        asr = rates["attack_success_rate_by_style"]
        report: dict[str, Any] = {
            "attacker": self.attacker, "target": self.target, "judge": self.judge,
            "judge_model": self.judge_model or (self.target if self.judge == "llm" else None),
            "threshold": self.threshold, "require_compliance": self.require_compliance,
            "seeds": len(seeds), "written": written, "duplicates_removed": duplicates, "attempted": len(rows),
            "successful": len(red), **rates,
        }
        out = Path(self.output_dir)
        write_folder(out, {"report.json": report, "attempts.jsonl": rows, "redteam_set.jsonl": red}, "redteam",
                     self.overwrite)
        metrics = {"redteam/attack_success_rate": report["attack_success_rate"],
                   "redteam/refusal_rate": report["refusal_rate"], "redteam/empty_rate": report["empty_rate"],
                   "redteam/attempted": len(rows),
                   "redteam/successful": len(red), "redteam/duplicates_removed": duplicates,
                   **{f"redteam/asr/{s}": v for s, v in asr.items()}}
        plots = {"attack_success_rate": bar_chart("attack success rate by style", asr, "share of attacks")}
        report["mlflow_run_id"] = log_run(self.tracking_uri, self.experiment_name, self.run_name,
                                           {"method": "redteam", "model": self.target, "attacker": self.attacker},
                                           vars(self), metrics, out, plots, self.run_id)
        (out / "report.json").write_text(json_text(report), encoding="utf-8")
        print(f"red team: {len(red)} successful attacks of {len(rows)} (ASR {report['attack_success_rate']:.2f}; "
              f"{duplicates} duplicates removed) -> {out / 'redteam_set.jsonl'}")
        return report
