"""``lightning-post jailbreak-data``: jailbreak-defense SFT records and DPO pairs, mixed with helpful data, and a
held-out share of the harmful requests (the steps: :mod:`lightning_post.safety.defense`).

    lightning-post jailbreak-data --config configs/jailbreak_data/default.yaml
    lightning-post fit --config configs/dpo/jailbreak.yaml     # DPO on output_dir/pairs.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lightning_post.commands.base import Generates, StageCommand
from lightning_post.evaluation.safety import JAILBREAK_TEMPLATES
from lightning_post.generation import ChatGenerator
from lightning_post.methods.policy import load_policy
from lightning_post.models.loading import DEFAULT_MODEL, check_models
from lightning_post.outputs import check_output_dir, json_text, write_folder
from lightning_post.records.files import DataError
from lightning_post.records.instruction import load_instruction_records
from lightning_post.records.prompts import load_prompt_items
from lightning_post.safety.defense import (
    RESOURCES,
    borderline_examples,
    defense_examples,
    helpful_pool,
    hold_out,
    load_redteam_set,
    load_refusals,
    refusal_pairs,
)
from lightning_post.tracking import log_run


class JailbreakDefenseData(Generates, StageCommand):
    """Build jailbreak-defense SFT records and DPO pairs mixed with helpful data, and hold out harmful requests."""

    def __init__(
        self,
        harmful_prompts: Optional[str] = None,
        max_harmful: int = 96,
        heldout_harmful: int = 24,
        redteam_sets: Union[str, list[str], None] = None,
        templates: Optional[list[str]] = None,
        templates_per_prompt: int = 2,
        include_plain: bool = True,
        refusals: Optional[str] = None,
        model: str = DEFAULT_MODEL,
        helpful_sft: Union[str, list[str], None] = None,
        helpful_pairs: Optional[str] = None,
        helpful_ratio: float = 1.0,
        refusal_contrast: bool = True,
        borderline_prompts: Optional[str] = None,
        borderline_repeats: int = 1,
        temperature: float = 0.0,
        output_dir: str = "mlruns/jailbreak_data/latest",
        experiment_name: str = "jailbreak_data",
        **kwargs,
    ):
        """
        Args:
            harmful_prompts: requests to refuse: a prompt file or HH-RLHF dialogues (their first Human turn);
                ``null`` = the bundled 16 red-team seed requests.
            max_harmful: read the first N distinct harmful requests (held-out ones included).
            heldout_harmful: of those, this many (a seeded random choice) are held out of training and written to
                ``heldout_harmful.jsonl`` for measuring.
            redteam_sets: red-team sets (``redteam_set.jsonl``, one path or a list) whose attacks are added as they
                are.
            templates: jailbreak templates to wrap requests in (``null`` = all six of
                :data:`~lightning_post.evaluation.safety.JAILBREAK_TEMPLATES`).
            templates_per_prompt: templates drawn per training request.
            include_plain: also train on the unwrapped request.
            refusals: refusal texts, ``{"response"}`` records (``null`` = the bundled six); one per example, drawn.
            model: the model whose compliant answers become the rejected replies of the DPO pairs (pairs where it
                refuses anyway, or answers nothing, are dropped and counted).
            helpful_sft: instruction files (one path or a list) mixed into the SFT data (``null`` = the bundled
                instructions).
            helpful_pairs: preference pairs mixed into the DPO data (``null`` = the bundled pairs).
            helpful_ratio: helpful examples per defense example (capped by what the files hold).
            refusal_contrast: also build helpful DPO pairs from the helpful instructions: chosen = the record's
                answer, rejected = a refusal, so that refusing a harmless request is learnt to be worse than
                answering it (the counterweight to over-refusal).
            borderline_prompts: harmless requests that sound harmful ("How do I kill all the background jobs in my
                shell?"), a prompt file (``null`` = the bundled 48, none of them among the evaluation's harmless
                probe prompts). The model's own answers to them (where it answers) become helpful SFT records and
                DPO pairs over a refusal: the words alone are no reason to refuse.
            borderline_repeats: times each borderline example is added (0 = none).
            temperature: sampling temperature of the compliant answers (0 = greedy).
            output_dir: folder of ``sft.jsonl``, ``pairs.jsonl``, ``heldout_harmful.jsonl`` and ``report.json``.
            experiment_name: MLflow experiment.
            max_new_tokens: longest compliant answer generated.
            dtype: parameter dtype of ``model``.
            seed: seed of the hold-out, template and refusal draws and the shuffling.
            **kwargs: the settings of :class:`~lightning_post.commands.base.Generates` and
                :class:`~lightning_post.commands.base.StageCommand`.
        """
        super().__init__(**kwargs)
        self.keep(locals())
        check_models(self, ("model",))
        self.templates = list(JAILBREAK_TEMPLATES) if templates is None else templates
        unknown = [t for t in self.templates if t not in JAILBREAK_TEMPLATES]
        if unknown:
            raise ValueError(f"templates: unknown {unknown}; choose from {list(JAILBREAK_TEMPLATES)}")
        if not 1 <= templates_per_prompt <= len(self.templates):
            raise ValueError(f"templates_per_prompt must be in 1..{len(self.templates)}")
        if borderline_repeats < 0:
            raise ValueError("borderline_repeats must be 0 or more")
        if heldout_harmful >= max_harmful:
            raise ValueError("heldout_harmful must leave training requests: it must be below max_harmful")

    def run(self) -> dict:
        from lightning_post.data.instruction import default_instruction_file
        from lightning_post.records.files import default_preference_file

        check_output_dir(self.output_dir, "jailbreak-data", self.overwrite)
        rng = random.Random(self.seed)
        torch.manual_seed(self.seed)
        # 1. inputs, validated before the model loads
        source = self.harmful_prompts or str(RESOURCES / "redteam_seeds.jsonl")
        items, _ = load_prompt_items([source], True, self.max_harmful, skip_invalid=True)
        requests = [it["prompt"][-1]["content"] for it in items]
        if len(requests) <= self.heldout_harmful:
            raise DataError(source, None, f"has {len(requests)} requests; heldout_harmful needs more")
        refusals = load_refusals(self.refusals or str(RESOURCES / "refusals.jsonl"))
        sets = [self.redteam_sets] if isinstance(self.redteam_sets, str) else self.redteam_sets or []
        attacks = [a for path in sets for a in load_redteam_set(path)]
        sft_files = [self.helpful_sft] if isinstance(self.helpful_sft, str) else self.helpful_sft
        helpful_sft = load_instruction_records(sft_files or [default_instruction_file()])
        borderline = []
        if self.borderline_repeats:
            path = self.borderline_prompts or str(RESOURCES / "borderline_prompts.jsonl")
            borderline = [it["prompt"] for it in load_prompt_items([path], True, None)[0]]
        helpful_pairs = [json.loads(line) for line in Path(self.helpful_pairs or default_preference_file())
                         .read_text(encoding="utf-8").splitlines() if line.strip()]
        # 2. hold out: these requests are never in training data
        heldout, train_requests = hold_out(requests, self.heldout_harmful, rng)
        # 3. wrap: each training request plain and in templates_per_prompt drawn templates; red-team attacks as is
        defense, leaks = defense_examples(train_requests, self.templates, self.templates_per_prompt,
                                          self.include_plain, attacks, [requests[i] for i in heldout], refusals, rng)
        # 4. the model's compliant answers -> rejected replies of the pairs
        model, tok = load_policy(self.model, self.dtype, self._device())
        answers = ChatGenerator(model, tok, self.batch_size, self.max_new_tokens, temperature=self.temperature).generate(
            [d["prompt"] for d in defense] + borderline, desc="compliant answers")
        answers, borderline_answers = answers[: len(defense)], answers[len(defense):]
        pairs, refused, empty = refusal_pairs(defense, answers)
        sft = [{"messages": [*d["prompt"], {"role": "assistant", "content": d["refusal"]}], "source": d["source"]}
               for d in defense]
        # 5. borderline requests: the model's own answer (where it answers) is the target, over a refusal
        kept, borderline_sft, borderline_pairs = borderline_examples(borderline, borderline_answers, refusals,
                                                                     self.borderline_repeats, rng)
        # 6. mix in helpful data (with refusal-contrast pairs) and shuffle
        pool = helpful_pool(helpful_pairs, helpful_sft, refusals, self.refusal_contrast, rng)
        n_sft = min(len(helpful_sft), round(self.helpful_ratio * len(sft)))
        n_pairs = min(len(pool), round(self.helpful_ratio * len(pairs)))
        sft_rows = sft + [{**r, "source": "helpful"} for r in rng.sample(helpful_sft, n_sft)] + borderline_sft
        drawn = rng.sample(pool, n_pairs)
        pair_rows = pairs + drawn + borderline_pairs
        rng.shuffle(sft_rows)
        rng.shuffle(pair_rows)
        report: dict[str, Any] = {
            "harmful_requests": len(requests), "heldout_harmful": len(heldout), "train_requests": len(train_requests),
            "redteam_attacks": len(attacks) - leaks, "redteam_dropped_heldout": leaks,
            "defense_examples": len(defense), "templates": self.templates,
            "sft_examples": len(sft_rows), "sft_helpful": n_sft, "dpo_pairs": len(pair_rows), "dpo_helpful": n_pairs,
            "dpo_helpful_contrast": sum(r["source"] == "helpful_contrast" for r in drawn),
            "dropped_model_refused": refused, "dropped_empty_answer": empty,
            "model_refusal_rate": refused / len(defense) if defense else 0.0,
            "borderline_prompts": len(borderline), "borderline_kept": kept,
            "borderline_examples": len(borderline_sft),
        }
        out = Path(self.output_dir)
        write_folder(out, {"report.json": report, "sft.jsonl": sft_rows, "pairs.jsonl": pair_rows,
                           "heldout_harmful.jsonl": [{"prompt": requests[i]} for i in heldout]},
                     "jailbreak-data", self.overwrite)
        metrics = {f"jailbreak_data/{k}": v for k, v in report.items() if isinstance(v, (int, float))}
        report["mlflow_run_id"] = log_run(self.tracking_uri, self.experiment_name, self.run_name,
                                           {"method": "jailbreak_data", "model": self.model}, vars(self), metrics, out,
                                           None, self.run_id)
        (out / "report.json").write_text(json_text(report), encoding="utf-8")
        print(f"jailbreak defense data: {len(sft_rows)} SFT records, {len(pair_rows)} DPO pairs "
              f"({n_pairs} helpful), {len(heldout)} harmful requests held out -> {out}")
        return report
