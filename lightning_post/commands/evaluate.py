"""``lightning-post evaluate``: one model's instruction following, knowledge and safety, written to a folder (moved
into place when complete) and recorded as an MLflow run with plots.

    lightning-post evaluate --config configs/evaluate/default.yaml --model exports/dpo/model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from lightning_post.commands.base import Generates, StageCommand, check_counts, flat_metrics
from lightning_post.evaluation.abtest import ab_statistics
from lightning_post.evaluation.knowledge import default_mc_file, evaluate_mc, load_mc
from lightning_post.evaluation.probes import default_harmless_file, harmful_prompts, load_eval_prompts, safety_probes
from lightning_post.evaluation.safety import (
    JAILBREAK_TEMPLATES,
    crows_pairs_bias,
    default_crows_pairs_file,
    read_crows_pairs,
)
from lightning_post.generation import ChatGenerator
from lightning_post.methods.policy import load_policy
from lightning_post.models.loading import DEFAULT_MODEL, check_models
from lightning_post.outputs import check_output_dir, json_text, write_folder
from lightning_post.plotting import bar_chart
from lightning_post.scoring.judges import DEFAULT_QUESTION, LLMJudge, build_judge
from lightning_post.scoring.text_metrics import BertScorer, check_bleu_tokenizers, text_metrics
from lightning_post.tracking import log_run


class Evaluate(Generates, StageCommand):
    """Evaluate one model: instruction following (BLEU, ROUGE, BERTScore against references; a judge's win rate
    against a reference model's answers), multiple-choice knowledge, and safety (refusals, jailbreaks, CrowS-Pairs
    bias, privacy)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        prompts: Optional[str] = None,
        max_prompts: Optional[int] = 32,
        reference_field: Optional[str] = "response",
        baseline_field: Optional[str] = None,
        judge: Optional[str] = "llm",
        judge_model: Optional[str] = None,
        judge_question: str = DEFAULT_QUESTION,
        bertscore: bool = True,
        bertscore_model: Optional[str] = None,
        bertscore_languages: Optional[list[str]] = None,
        bleu_tokenizers: Optional[dict[str, str]] = None,
        language_field: Optional[str] = "language",
        mc_files: Optional[list[str]] = None,
        harmful_prompts: Optional[str] = None,
        max_harmful: int = 24,
        jailbreak_templates: Optional[list[str]] = None,
        crows_pairs: Optional[str] = None,
        max_crows_pairs: Optional[int] = 300,
        privacy_probes: bool = True,
        harmless_prompts: Optional[str] = None,
        max_harmless: int = 24,
        output_dir: str = "mlruns/evaluate/latest",
        experiment_name: str = "evaluate",
        **kwargs,
    ):
        """
        Args:
            model: alias, export folder, hub id or ``.ckpt`` of the model to evaluate.
            prompts: instruction file with references (``null`` = the bundled instructions, their ``response`` as
                reference); ``../shared/data/instructions/predictions/text-davinci-003.jsonl`` has ``target``
                references and text-davinci-003's ``response`` as a baseline.
            max_prompts: evaluate the first N prompts (``null`` = all).
            reference_field: record field holding the reference answer (``null`` = no reference metrics).
            baseline_field: record field holding a reference model's answer; the judge's win rate is against it.
            judge: ``llm`` (pairwise question to ``judge_model``), ``reward_model`` (``judge_model`` is its folder),
                or ``null`` (no judge).
            judge_model: the judge's model (``null`` with ``llm`` = the evaluated model judges).
            judge_question: the pairwise question asked to an LLM judge.
            bertscore: compute BERTScore (offline encoder ``bertscore_model``; ``null`` = all-MiniLM-L6-v2).
            bertscore_model: local encoder folder for BERTScore.
            bertscore_languages: the languages ``bertscore_model`` was trained on, stated in the report (``null`` =
                English for the default encoder); scores of samples in other languages carry a note.
            bleu_tokenizers: sacrebleu tokenizer per language (``null`` = ``{en: 13a, ko: char}``; any of
                sacrebleu's, e.g. ``char``).
            language_field: record field with the sample's language (``en`` or ``ko``); records without it, or
                ``null``, are told apart by script (Hangul or not).
            mc_files: multiple-choice files (``null`` = the bundled 20 questions; ``[]`` = none).
            harmful_prompts: prompts to refuse (first user turn of each record; e.g. HH-RLHF red-team dialogues).
            max_harmful: use the first N distinct harmful prompts.
            jailbreak_templates: wrappers applied to the harmful prompts (``null`` = all of
                :data:`~lightning_post.evaluation.safety.JAILBREAK_TEMPLATES`; ``[]`` = none).
            crows_pairs: CrowS-Pairs CSV (``null`` = ``../shared/data/safety/crows_pairs_anonymized.csv`` if present).
            max_crows_pairs: score the first N pairs (``null`` = all 1,508).
            privacy_probes: ask the bundled privacy probes and scan the answers for personal data.
            harmless_prompts: harmless prompts whose refusals count as over-refusal (``null`` = the bundled 24
                that sound alarming out of context, e.g. "How do I kill a Python process?").
            max_harmless: use the first N harmless prompts (0 = no over-refusal probe).
            output_dir: folder of ``report.json`` and ``answers.jsonl`` (replaced when the evaluation completes).
            experiment_name: MLflow experiment.
            dtype: parameter dtype of the evaluated model.
            run_name: MLflow run name (``null`` = generated).
            seed: seed of the bootstrap intervals.
            **kwargs: the settings of :class:`~lightning_post.commands.base.Generates` and
                :class:`~lightning_post.commands.base.StageCommand`.
        """
        super().__init__(**kwargs)
        self.keep(locals())
        check_counts(self, ("max_prompts", "max_harmful", "max_crows_pairs", "max_harmless", "max_new_tokens",
                            "batch_size"), positive=("max_prompts", "max_new_tokens", "batch_size"))
        check_models(self, ("model", "judge_model"))
        unknown = [t for t in (jailbreak_templates or []) if t not in JAILBREAK_TEMPLATES]
        if unknown:
            raise ValueError(f"unknown jailbreak templates {unknown}; choose from {list(JAILBREAK_TEMPLATES)}")
        if judge not in (None, "llm", "reward_model"):
            raise ValueError(f"judge must be 'llm', 'reward_model' or null, got {judge!r}")
        if judge == "reward_model" and not judge_model:
            raise ValueError("judge 'reward_model' needs judge_model: the reward model's folder")
        self.bleu_tokenizers = check_bleu_tokenizers(bleu_tokenizers)  # an unknown or missing tokenizer stops here

    def run(self) -> dict:
        from lightning_post.data.instruction import default_instruction_file

        torch.manual_seed(self.seed)
        # 1. inputs (and the output folder) are validated before any model is loaded
        check_output_dir(self.output_dir, "evaluate", self.overwrite)
        prompts = load_eval_prompts(self.prompts or default_instruction_file(), self.max_prompts,
                                    self.reference_field, self.baseline_field, self.language_field)
        mc = [r for f in ([default_mc_file()] if self.mc_files is None else self.mc_files) for r in load_mc(f)]
        crows_file = self.crows_pairs or default_crows_pairs_file()
        crows = read_crows_pairs(crows_file, self.max_crows_pairs) if crows_file else []
        harmful = harmful_prompts(self.harmful_prompts, self.max_harmful)
        harmless = harmful_prompts(self.harmless_prompts or default_harmless_file(), self.max_harmless) \
            if self.max_harmless else []
        templates = list(JAILBREAK_TEMPLATES) if self.jailbreak_templates is None else self.jailbreak_templates
        # 2. answers
        model, tok = load_policy(self.model, self.dtype, self._device())
        gen = ChatGenerator(model, tok, self.batch_size, self.max_new_tokens)
        answers = gen.generate([p["prompt"] for p in prompts], desc="answers")
        report: dict[str, Any] = {"model": self.model, "prompts": len(prompts)}
        rows = [{"prompt": p["prompt"][-1]["content"], "answer": a, "reference": p["reference"],
                 "baseline": p["baseline"], "language": p["language"]} for p, a in zip(prompts, answers)]
        # 3. reference metrics
        if self.reference_field:
            scorer = BertScorer(self.bertscore_model, device=self._device(), languages=self.bertscore_languages) \
                if self.bertscore else None
            per_sample, aggregate = text_metrics(answers, [p["reference"] for p in prompts], scorer,
                                                 [p["language"] for p in prompts], self.bleu_tokenizers)
            report["text"] = aggregate
            for row, m in zip(rows, per_sample):
                row["metrics"] = m
        # 4. judge: win rate against the baseline answers
        judge = None
        if self.judge:
            judge = LLMJudge.from_generator(gen, self.judge_question) if self.judge == "llm" and not self.judge_model \
                else build_judge(self.judge, self.judge_model, self.judge_question, device=self._device())
        if judge is not None and self.baseline_field:
            verdicts = judge.compare([p["prompt"] for p in prompts], [p["baseline"] for p in prompts], answers)
            stats = ab_statistics([v["verdict"] for v in verdicts], seed=self.seed)
            report["judge"] = {"kind": self.judge, "model": self.judge_model or self.model,
                               "win_rate_vs_baseline": stats["win_rate"], "win_rate_ci": stats["win_rate_ci"],
                               "wins": stats["wins"], "ties": stats["ties"], "losses": stats["losses"],
                               "sign_test_p": stats["sign_test_p"]}
            for row, v in zip(rows, verdicts):
                row["judge"] = v
        # 5. knowledge
        if mc:
            result = evaluate_mc(gen, mc)
            report["knowledge"] = {k: v for k, v in result.items() if k != "rows"}
        # 6. safety
        safety, safety_rows = safety_probes(gen, harmful, templates, self.privacy_probes, judge, harmless)
        if crows:
            bias = crows_pairs_bias(model, tok, crows, self.batch_size)
            safety["crows_pairs"] = bias
            safety["bias_distance"] = abs(bias["stereotype_preference"] - 0.5)
        report["safety"] = safety
        # 7. outputs and the MLflow run
        out = Path(self.output_dir)
        write_folder(out, {"report.json": report, "answers.jsonl": rows, "safety_answers.jsonl": safety_rows},
                     "evaluate", self.overwrite)
        plots = {}
        if "text" in report:
            plots["text_metrics"] = bar_chart("reference metrics", {k: v for k, v in report["text"].items()
                                                               if isinstance(v, float)}, "score")
        if "judge" in report:
            j = report["judge"]
            plots["win_rate"] = bar_chart(f"judge vs baseline: win rate {j['win_rate_vs_baseline']:.2f}",
                                     {"wins": j["wins"], "ties": j["ties"], "losses": j["losses"]}, "prompts", None)
        if "crows_pairs" in safety:
            plots["crows_pairs"] = bar_chart("CrowS-Pairs: share preferring the stereotype", {
                k: v["stereotype_preference"] for k, v in safety["crows_pairs"]["by_type"].items()}, "share")
        if "jailbreak_by_template" in safety:
            plots["refusals"] = bar_chart("refusal rate", {"plain": safety["refusal_rate"],
                                                      **safety["jailbreak_by_template"],
                                                      **({"harmless (over-refusal)": safety["over_refusal_rate"]}
                                                         if "over_refusal_rate" in safety else {})}, "share refused")
        metrics = flat_metrics("eval/", {k: v for k, v in report.items() if k in ("text", "judge", "knowledge")})
        metrics.update(flat_metrics("safety/", safety))
        params = {**vars(self), **{f"bleu_signature.{lang}": sig  # what papers report beside a BLEU score
                                   for lang, sig in report.get("text", {}).get("bleu_signature", {}).items()}}
        report["mlflow_run_id"] = log_run(self.tracking_uri, self.experiment_name, self.run_name,
                                           {"method": "evaluate", "model": self.model},
                                           params, metrics, out, plots, self.run_id)
        (out / "report.json").write_text(json_text(report), encoding="utf-8")
        return report
