"""``lightning-post abtest``: a baseline A and a candidate B compared on the same prompts, written to a folder
(moved into place when complete) and recorded as an MLflow run with plots.

    lightning-post abtest --config configs/abtest/default.yaml --model_a smollm2-135m-instruct --model_b exports/dpo/model
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from lightning_post.commands.base import Generates, StageCommand, check_counts, flat_metrics
from lightning_post.errors import ConfigError
from lightning_post.evaluation.abtest import RULE, ab_statistics, recommend, safety_regressions
from lightning_post.evaluation.probes import harmful_prompts, load_eval_prompts, safety_probes
from lightning_post.evaluation.safety import JAILBREAK_TEMPLATES
from lightning_post.generation import ChatGenerator
from lightning_post.methods.policy import load_policy
from lightning_post.models.loading import DEFAULT_MODEL, check_models
from lightning_post.outputs import check_output_dir, json_text, write_folder
from lightning_post.plotting import bar_chart
from lightning_post.records.files import DataError, json_lines
from lightning_post.scoring.judges import DEFAULT_QUESTION, LLMJudge, build_judge
from lightning_post.tracking import log_run


class ABTest(Generates, StageCommand):
    """Compare a baseline A and a candidate B on the same prompts: pairwise verdicts from a judge (or imported human
    annotations), win/tie/loss counts, win rate with intervals, a sign test, the sample size a given effect needs,
    the safety probes of both, and a recommendation by :data:`~lightning_post.evaluation.abtest.RULE`."""

    def __init__(
        self,
        model_a: str = DEFAULT_MODEL,
        model_b: str = DEFAULT_MODEL,
        prompts: Optional[str] = None,
        max_prompts: Optional[int] = 64,
        judge: str = "llm",
        judge_model: Optional[str] = None,
        judge_question: str = DEFAULT_QUESTION,
        tie_band: Optional[float] = None,
        annotations: Optional[str] = None,
        harmful_prompts: Optional[str] = None,
        max_harmful: int = 24,
        jailbreak_templates: Optional[list[str]] = None,
        privacy_probes: bool = True,
        tolerance: float = 0.05,
        alpha: float = 0.05,
        effect: float = 0.6,
        power: float = 0.8,
        output_dir: str = "mlruns/abtest/latest",
        experiment_name: str = "abtest",
        **kwargs,
    ):
        """
        Args:
            model_a: the baseline (alias, export folder, hub id or ``.ckpt``).
            model_b: the candidate.
            prompts: prompt file (``null`` = the bundled instructions).
            max_prompts: compare on the first N prompts.
            judge: ``llm`` or ``reward_model`` (ignored when ``annotations`` are given).
            judge_model: the judge's model (``null`` with ``llm`` = the baseline A judges).
            judge_question: the pairwise question asked to an LLM judge.
            tie_band: verdicts with ``|p_B - 1/2| <= tie_band`` are ties (``null`` = 0.05 for llm, 0 for reward_model).
            annotations: human verdicts instead of a judge: JSONL ``{"index": i, "verdict": "A" | "B" | "tie"}`` per
                prompt (``index`` = position in the prompt file).
            harmful_prompts: prompts for the safety probes of both models (``null`` = no refusal/jailbreak probes).
            max_harmful: use the first N distinct harmful prompts.
            jailbreak_templates: jailbreak wrappers (``null`` = all; ``[]`` = none).
            privacy_probes: ask both models the privacy probes.
            tolerance: largest allowed worsening of a safety rate (absolute) before B is refused.
            alpha: significance level of the sign test.
            effect: decisive win rate the sample-size figure is computed for.
            power: power of that figure.
            output_dir: folder of ``report.json`` and ``verdicts.jsonl``.
            experiment_name: MLflow experiment.
            dtype: parameter dtype of both models.
            seed: seed of the bootstrap interval.
            **kwargs: the settings of :class:`~lightning_post.commands.base.Generates` and
                :class:`~lightning_post.commands.base.StageCommand`.
        """
        super().__init__(**kwargs)
        self.keep(locals())
        check_counts(self, ("max_prompts", "max_harmful", "max_new_tokens", "batch_size"),
                     positive=("max_prompts", "max_new_tokens", "batch_size"))
        check_models(self, ("model_a", "model_b", "judge_model"))
        for name, low, high in (("tolerance", 0, 1), ("alpha", 0, 1), ("effect", 0.5, 1), ("power", 0, 1)):
            if not low < getattr(self, name) < high and not (name == "tolerance" and getattr(self, name) == 0):
                raise ConfigError(name, f"must be in ({low}, {high}), got {getattr(self, name)}")
        if judge not in ("llm", "reward_model"):
            raise ValueError(f"judge must be 'llm' or 'reward_model', got {judge!r}")

    def _annotations(self, n: int) -> list[str]:
        verdicts: dict[int, str] = {}
        first: dict[int, str] = {}
        for where, rec in json_lines(self.annotations):
            if not isinstance(rec, dict) or not isinstance(rec.get("index"), int) or not 0 <= rec["index"] < n:
                raise DataError(where, "index", f"must be a prompt position in 0..{n - 1}")
            if rec.get("verdict") not in ("A", "B", "tie"):
                raise DataError(where, "verdict", f"must be 'A', 'B' or 'tie', got {rec.get('verdict')!r}")
            if rec["index"] in verdicts:  # two verdicts for one prompt: which one counts is not ours to guess
                raise DataError(where, "index", f"prompt {rec['index']} already has a verdict, at "
                                                f"{first[rec['index']]}")
            verdicts[rec["index"]] = rec["verdict"]
            first[rec["index"]] = where
        missing = [i for i in range(n) if i not in verdicts]
        if missing:
            raise DataError(str(self.annotations), "index", f"has no verdict for prompts {missing[:5]}")
        return [verdicts[i] for i in range(n)]

    def run(self) -> dict:
        from lightning_post.data.instruction import default_instruction_file

        torch.manual_seed(self.seed)
        check_output_dir(self.output_dir, "abtest", self.overwrite)
        prompts = [p["prompt"] for p in load_eval_prompts(self.prompts or default_instruction_file(),
                                                          self.max_prompts, None, None)]
        human = self._annotations(len(prompts)) if self.annotations else None
        harmful = harmful_prompts(self.harmful_prompts, self.max_harmful)
        templates = list(JAILBREAK_TEMPLATES) if self.jailbreak_templates is None else self.jailbreak_templates
        answers, safety = {}, {}
        gens = {}
        for side, path in (("A", self.model_a), ("B", self.model_b)):
            model, tok = load_policy(path, self.dtype, self._device())
            gens[side] = ChatGenerator(model, tok, self.batch_size, self.max_new_tokens)
            answers[side] = gens[side].generate(prompts, desc=f"answers of {side}")
            safety[side], _ = safety_probes(gens[side], harmful, templates, self.privacy_probes)
        if human is not None:
            verdicts = [{"verdict": v, "source": "human"} for v in human]
        else:
            judge = LLMJudge.from_generator(gens["A"], self.judge_question, 0.05 if self.tie_band is None
                                            else self.tie_band) if self.judge == "llm" and not self.judge_model \
                else build_judge(self.judge, self.judge_model, self.judge_question, self.tie_band,
                                 device=self._device())
            verdicts = judge.compare(prompts, answers["A"], answers["B"])
        stats = ab_statistics([v["verdict"] for v in verdicts], self.alpha, effect=self.effect, power=self.power,
                              seed=self.seed)
        regressions = safety_regressions(safety["A"], safety["B"], self.tolerance)
        decision, reason = recommend(stats, regressions)
        report = {"model_a": self.model_a, "model_b": self.model_b, "judge": "human" if human else self.judge,
                  "stats": stats, "safety": safety, "safety_regressions": regressions, "rule": RULE,
                  "decision": decision, "reason": reason}
        rows = [{"index": i, "prompt": p[-1]["content"], "answer_a": a, "answer_b": b, **v}
                for i, (p, a, b, v) in enumerate(zip(prompts, answers["A"], answers["B"], verdicts))]
        out = Path(self.output_dir)
        write_folder(out, {"report.json": report, "verdicts.jsonl": rows}, "abtest", self.overwrite)
        plots = {"verdicts": bar_chart("verdicts (B = candidate)", {"B wins": stats["wins"], "tie": stats["ties"],
                                                                "A wins": stats["losses"]}, "prompts", None)}
        shared = [k for k in ("refusal_rate", "jailbreak_refusal_rate", "pii_answer_rate") if k in safety["A"]]
        if shared:
            plots["safety"] = bar_chart("safety: A then B", {f"{k} {s}": safety[s][k] for k in shared for s in "AB"},
                                   "rate")
        metrics = flat_metrics("ab/", {k: v for k, v in stats.items() if not isinstance(v, list)})
        metrics["ab/ship_b"] = float(decision == "ship B")
        for side in "AB":
            metrics.update(flat_metrics(f"safety_{side}/", safety[side]))
        report["mlflow_run_id"] = log_run(self.tracking_uri, self.experiment_name, self.run_name,
                                           {"method": "abtest", "model_a": self.model_a, "model_b": self.model_b,
                                            "decision": decision}, vars(self), metrics, out, plots, self.run_id)
        (out / "report.json").write_text(json_text(report), encoding="utf-8")
        print(f"A/B decision: {decision} -- {reason}")
        return report
