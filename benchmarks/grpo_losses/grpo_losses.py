"""Every registered GRPO-family loss of lightning-post against TRL 1.16's own ``GRPOTrainer._compute_loss``, on the
same seeded random per-token log-probabilities; prints the largest difference per loss and setting
(``benchmarks/grpo_losses/GRPO_LOSSES.md`` records a run).

Run it with the TRL environment's Python (``bash benchmarks/setup_trl.sh`` builds it)::

    benchmarks/.trl-venv/bin/python benchmarks/grpo_losses/grpo_losses.py [--json PATH]

Our side is ``lightning_post.losses.grpo`` (it needs only torch, so the repository root is put on ``sys.path``;
lightning is not imported). TRL's side is TRL's own code, called, not restated:

* ``GRPOTrainer._compute_loss(self, model, inputs)``, unbound, with a stand-in ``self`` (a ``SimpleNamespace`` with
  the attributes it reads: ``loss_type``, ``beta``, ``epsilon_low`` / ``epsilon_high``, ``importance_sampling_level``,
  ``off_policy_mask_threshold``, ``max_completion_length``, ``args.delta`` / ``args.use_bias_correction_kl`` /
  ``args.sapo_*`` / ``args.vespo_*``, one process, one accumulation step, no vLLM, no entropy mask or bonus). TRL's
  own ``_get_per_token_logps_and_entropies``, ``get_off_policy_mask`` and ``get_gamma_weights`` are bound to it; the
  stand-in model's forward returns fixed per-token ``log_probs`` (a leaf tensor, so the gradient is compared too).
  The returned loss, the gradient of the loss with respect to the policy's per-token log-probabilities, and the
  metrics TRL logs (``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``cispo_clip_ratio``, ``kl``,
  ``vespo/phi_seq_mean``) are compared with ours.
* Group advantages (``scale_rewards``): TRL computes them inside ``_generate_and_score_completions``, which also
  generates, so it cannot be called on given rewards. The script runs TRL's own source lines of that block (the
  ``sum_then_normalize`` branch through ``nan_to_num``), cut out of ``inspect.getsource`` by their first and last
  line and executed with the rewards in its namespace: TRL's code, not a restatement, but not a call of the method.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import json
import math
import sys
import textwrap
import time
import types
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: our losses, without installing

from lightning_post.losses.grpo import GRPO_INPUTS, GRPO_LOSSES, group_advantages  # noqa: E402
from lightning_post.losses.settings import loss_settings  # noqa: E402

warnings.filterwarnings("ignore")
import trl  # noqa: E402
from trl import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

SEED = 0
K = 4  # replies per prompt
N_PROMPTS = 6
B = N_PROMPTS * K
PROMPT_LEN, T = 5, 12
DTYPES = (torch.float32, torch.float64)
CLIP_FAMILY = ("grpo", "bnpo", "dapo", "dr_grpo", "luspo")

#: the settings each loss is run with, beyond the shared axes (importance_sampling_level, beta, bias correction,
#: off-policy mask); names are our (= TRL's GRPOConfig) setting names
OWN_AXES: dict[str, dict[str, tuple]] = {
    **{name: {"epsilon_low": (0.2,), "epsilon_high": (0.2, 0.28), "delta": (None, 1.5)} for name in CLIP_FAMILY},
    "cispo": {"epsilon_high": (1.2, 5.0)},
    "sapo": {"sapo_temperature_pos": (1.0, 0.5), "sapo_temperature_neg": (1.05, 2.0)},
    "vespo": {"vespo_k_pos": (2.0, 1.5), "vespo_lambda_pos": (3.0,), "vespo_k_neg": (3.0, 2.5),
              "vespo_lambda_neg": (2.0, 1.0)},
}
OWN_AXES["dr_grpo"]["max_completion_length"] = (T, 4 * T)
SHARED_AXES = {"importance_sampling_level": ("token", "sequence"), "beta": (0.0, 0.04),
               "use_bias_correction_kl": (True, False), "off_policy_mask_threshold": (None, 0.05)}
#: TRL's metric -> our GRPOLossOutput field, per loss
METRICS = {
    **{name: {"clip_ratio/low_mean": "clip_low", "clip_ratio/high_mean": "clip_high"} for name in CLIP_FAMILY},
    "cispo": {"cispo_clip_ratio": "clip_high"},
    "vespo": {"vespo/phi_seq_mean": "weight"},
}
#: where TRL computes in float32 whatever the input dtype, so float64 can only agree to float32 precision
TRL_FLOAT32: dict[str, str] = {
    "clip_ratio/low_mean": "TRL averages is_low_clipped.float(), a float32 tensor",
    "clip_ratio/high_mean": "TRL averages is_high_clipped.float(), a float32 tensor",
    "cispo_clip_ratio": "TRL averages is_cispo_clipped.float(), a float32 tensor",
    "advantages": "trl.trainer.utils.nanstd's Bessel factor count / (count - 1) divides two integer tensors, "
                  "which gives float32",
}
#: mismatches the harness must see: (label, our loss, our settings, TRL's loss_type, TRL's settings)
MISMATCHES = [
    ("grpo vs TRL bnpo", "grpo", {}, "bnpo", {}),
    ("dapo vs TRL dr_grpo", "dapo", {}, "dr_grpo", {"max_completion_length": T}),
    ("luspo vs TRL grpo", "luspo", {}, "grpo", {}),
    ("sapo vs TRL grpo", "sapo", {}, "grpo", {}),
    ("cispo vs TRL vespo", "cispo", {}, "vespo", {}),
    ("grpo epsilon_high 0.28 vs TRL 0.2", "grpo", {"epsilon_high": 0.28}, "grpo", {"epsilon_high": 0.2}),
    ("grpo token vs TRL sequence level", "grpo", {}, "grpo", {"importance_sampling_level": "sequence"}),
    ("grpo beta 0.04 k1 vs TRL k3", "grpo", {"beta": 0.04, "kl_estimator": "k1"}, "grpo", {"beta": 0.04}),
]


def settings_grid(name: str) -> list[dict]:
    """Every combination of the loss's own and the shared settings (bias correction only where beta != 0)."""
    axes = {**OWN_AXES.get(name, {}), **SHARED_AXES}
    declared = loss_settings(GRPO_LOSSES[name], len(GRPO_INPUTS))
    assert set(axes) <= set(declared), (name, set(axes) - set(declared))
    grid = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    return [s for s in grid if s["beta"] != 0 or s["use_bias_correction_kl"]]


# ---- the tensors ----------------------------------------------------------------------------------------------------
def random_batch(gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Right-padded replies of 1..T tokens; reference log-probs log U(0.02, 1); the sampler's (old) drift from it by
    N(0, 0.3) per token; the policy from the old by N(0, s) per token with s ~ U(0.02, 0.5) per reply (so some rows
    stay inside the clip range and some leave it); rewards in groups of K, advantages as TRL's default (group std)."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T) < lengths[:, None]).long()  # (B, T)
    ref = torch.log(torch.rand(B, T, generator=gen, dtype=torch.float64) * 0.98 + 0.02)
    old = ref + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    spread = 0.02 + 0.48 * torch.rand(B, 1, generator=gen, dtype=torch.float64)
    policy = old + spread * torch.randn(B, T, generator=gen, dtype=torch.float64)
    rewards = torch.randint(0, 3, (B,), generator=gen).to(torch.float64)
    advantages = group_advantages(rewards, K, "group")
    token_advantages = advantages[:, None] + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    m = mask.to(torch.float64)
    return {"mask": mask, "policy": (policy * m).to(dtype), "old": (old * m).to(dtype), "ref": (ref * m).to(dtype),
            "advantages": advantages.to(dtype), "token_advantages": (token_advantages * m).to(dtype)}


# ---- calling TRL's code ---------------------------------------------------------------------------------------------
class StandInModel:
    """A "model" whose forward returns fixed per-token log-probabilities: zeros on the prompt, then the replies'."""

    training = True

    def __init__(self, reply_logps: torch.Tensor):
        self.reply_logps = reply_logps  # (B, T), a leaf that requires grad

    def __call__(self, input_ids, **_):
        prompt = torch.zeros(input_ids.shape[0], input_ids.shape[1] - T, dtype=self.reply_logps.dtype)
        log_probs = torch.cat([prompt, self.reply_logps], dim=1)  # (B, P + T)
        return SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(log_probs), aux_loss=None)


def stand_in_trainer(model: StandInModel, loss_type: str, s: dict) -> SimpleNamespace:
    """The attributes ``_compute_loss`` reads, for one process, one accumulation step, no vLLM and no entropy terms;
    TRL's own helper methods are bound to it."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True,
                                  gather=lambda t: t, gather_for_metrics=lambda t: t,
                                  reduce=lambda t, reduction="sum": t, autocast=contextlib.nullcontext)
    epsilon_low = s.get("epsilon_low", 0.2)
    args = SimpleNamespace(delta=s.get("delta"), use_bias_correction_kl=s["use_bias_correction_kl"],
                           steps_per_generation=1, report_to=[],
                           sapo_temperature_pos=s.get("sapo_temperature_pos", 1.0),
                           sapo_temperature_neg=s.get("sapo_temperature_neg", 1.05),
                           **{k: s.get(k, v) for k, v in (("vespo_k_pos", 2.0), ("vespo_lambda_pos", 3.0),
                                                         ("vespo_k_neg", 3.0), ("vespo_lambda_neg", 2.0))})
    this = SimpleNamespace(
        model=model, accelerator=accelerator, args=args, loss_type=loss_type, beta=s["beta"],
        epsilon_low=epsilon_low, epsilon_high=s.get("epsilon_high", epsilon_low),
        importance_sampling_level=s["importance_sampling_level"],
        off_policy_mask_threshold=s["off_policy_mask_threshold"],
        max_completion_length=s.get("max_completion_length", 512), top_entropy_quantile=1.0,
        aux_loss_enabled=False, use_vllm=False, vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask, get_gamma_weights=GRPOTrainer.get_gamma_weights)
    this._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, this)
    return this


def trl_loss(loss_type: str, s: dict, batch: dict, advantages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """TRL's loss, its gradient with respect to the policy's per-token log-probs, and the metrics it logged."""
    policy = batch["policy"].clone().requires_grad_(True)
    model = StandInModel(policy)
    this = stand_in_trainer(model, loss_type, s)
    mask = batch["mask"]
    inputs = {"prompt_ids": torch.ones(B, PROMPT_LEN, dtype=torch.long),
              "prompt_mask": torch.ones(B, PROMPT_LEN, dtype=torch.long),
              "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": batch["old"], "num_items_in_batch": mask.sum()}
    if s["beta"] != 0.0:
        inputs["ref_per_token_logps"] = batch["ref"]
    loss = GRPOTrainer._compute_loss(this, model, inputs)
    loss.backward()
    return loss.detach(), policy.grad, {k: v[-1] for k, v in this._metrics["train"].items()}


def our_loss(loss_type: str, s: dict, batch: dict, advantages: torch.Tensor):
    policy = batch["policy"].clone().requires_grad_(True)
    out = GRPO_LOSSES[loss_type](policy, batch["old"], batch["ref"] if s["beta"] != 0.0 else None, advantages,
                                 batch["mask"], **s)
    out.loss.backward()
    return out, policy.grad


# ---- the comparisons ------------------------------------------------------------------------------------------------
def compare_losses(batch: dict) -> dict[str, dict]:
    """Per loss (and per-token-advantage variant): the largest |ours - TRL| of the loss, of its gradient and of each
    logged metric, over every setting."""
    results = {}
    variants = [(name, "advantages") for name in GRPO_LOSSES] + [(name, "token_advantages") for name in ("grpo", "dapo")]
    for name, adv_key in variants:
        label = name if adv_key == "advantages" else f"{name}, advantages (B, T)"
        worst: dict[str, float] = defaultdict(float)
        grid = settings_grid(name)
        for s in grid:
            theirs, their_grad, metrics = trl_loss(name, s, batch, batch[adv_key])
            ours, our_grad = our_loss(name, s, batch, batch[adv_key])
            worst["loss"] = max(worst["loss"], abs(ours.loss.item() - theirs.item()))
            worst["grad"] = max(worst["grad"], (our_grad.double() - their_grad.double()).abs().max().item())
            for metric, field in {**METRICS.get(name, {}), **({"kl": "kl"} if s["beta"] else {})}.items():
                worst[f"metric {metric}"] = max(worst[f"metric {metric}"], abs(getattr(ours, field).item() - metrics[metric]))
            worst["largest |loss|"] = max(worst["largest |loss|"], abs(theirs.item()))
            if not all(math.isfinite(v) for v in worst.values()):
                raise RuntimeError(f"{label} {s}: not finite: {dict(worst)}")
        results[label] = {"cases": len(grid), **worst}
    return results


def trl_advantage_block() -> str:
    """TRL's own lines that turn rewards into advantages (the ``sum_then_normalize`` branch), dedented."""
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions).splitlines()
    first = next(i for i, line in enumerate(source) if 'self.multi_objective_aggregation == "sum_then_normalize"' in line)
    last = next(i for i, line in enumerate(source) if "advantages = torch.nan_to_num(advantages, nan=0.0)" in line)
    return textwrap.dedent("\n".join(source[first:last + 1]))


def compare_advantages(gen: torch.Generator, dtype: torch.dtype) -> dict[str, dict]:
    block = compile(trl_advantage_block(), "trl-grpo-advantages", "exec")
    results = {}
    for scale, k, with_nan in itertools.product(("group", "batch", "none"), (1, 2, K, 8), (False, True)):
        rewards = torch.randint(0, 4, (48,), generator=gen).to(dtype) * 0.5
        if with_nan:
            rewards[torch.rand(48, generator=gen) < 0.15] = float("nan")
        this = SimpleNamespace(multi_objective_aggregation="sum_then_normalize", scale_rewards=scale,
                               reward_weights=torch.ones(1, dtype=dtype))
        scope = {"self": this, "torch": torch, "nanstd": nanstd, "device": "cpu", "num_generations": k,
                 "rewards_per_func": rewards[:, None], "unscorable_mask": torch.isnan(rewards)}
        exec(block, scope)
        ours = group_advantages(rewards, k, scale)
        key = f"scale_rewards={scale}" + (", NaN rewards" if with_nan else "")
        r = results.setdefault(key, {"cases": 0, "advantages": 0.0})
        r["cases"] += 1
        r["advantages"] = max(r["advantages"], (ours.double() - scope["advantages"].double()).abs().max().item())
    return results


def check_sensitivity(batch: dict) -> dict[str, float]:
    """|ours - TRL| of the loss for deliberately mismatched pairs: each must be far above the tolerance."""
    base = {"importance_sampling_level": "token", "beta": 0.0, "use_bias_correction_kl": True,
            "off_policy_mask_threshold": None}
    found = {}
    for label, ours_name, ours_s, trl_name, trl_s in MISMATCHES:
        theirs, _, _ = trl_loss(trl_name, {**base, **trl_s}, batch, batch["advantages"])
        ours, _ = our_loss(ours_name, {**base, **ours_s}, batch, batch["advantages"])
        found[label] = abs(ours.loss.item() - theirs.item())
    return found


def compare_in(dtype: torch.dtype) -> dict[str, dict]:
    """Every comparison on tensors of one dtype, from the same seed."""
    gen = torch.Generator().manual_seed(SEED)
    batch = random_batch(gen, dtype)
    return {"losses": compare_losses(batch), "advantages": compare_advantages(gen, dtype),
            "mismatches": check_sensitivity(batch), "coverage": coverage(batch)}


def metrics_cell(r: dict) -> str:
    """The largest difference of each logged metric, ``name value`` joined by commas."""
    return ", ".join(f"{k.removeprefix('metric ')} {fmt(v)}" for k, v in r.items() if k.startswith("metric"))


def coverage(batch: dict) -> dict[str, str]:
    """What the random inputs exercise: clipped tokens at epsilon 0.2, replies the off-policy mask drops at 0.05,
    sequence ratios outside the clip range, groups whose rewards are all equal."""
    m = batch["mask"].double()
    log_ratio = (batch["policy"] - batch["old"]).double()
    adv = batch["advantages"].double()[:, None]
    seq = ((log_ratio * m).sum(-1) / m.sum(-1)).exp()
    drift = -(log_ratio * m).sum(-1) / m.sum(-1)
    return {"reply tokens": f"{int(m.sum())}",
            "tokens clipped high / low": f"{int(((log_ratio.exp() > 1.2) & (adv > 0) & (m > 0)).sum())} / "
                                         f"{int(((log_ratio.exp() < 0.8) & (adv < 0) & (m > 0)).sum())}",
            "sequence ratios": f"{seq.min():.2f}..{seq.max():.2f}",
            "replies dropped by the off-policy mask at 0.05": f"{int(((adv[:, 0] < 0) & (drift > 0.05)).sum())} of {B}",
            "groups with all rewards equal": f"{int((batch['advantages'].view(-1, K) == 0).all(1).sum())} of {N_PROMPTS}"}


def fmt(x: float) -> str:
    """A difference in the tables: 0 when exact."""
    return f"{x:.1e}" if x else "0"


def main() -> None:
    start = time.perf_counter()
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    out = parser.parse_args()
    results = {str(dtype).removeprefix("torch."): compare_in(dtype) for dtype in DTYPES}
    print(f"lightning-post GRPO losses vs TRL {trl.__version__} GRPOTrainer._compute_loss (torch {torch.__version__}), "
          f"{B} replies ({N_PROMPTS} prompts x {K}) of 1..{T} tokens, seed {SEED}")
    print("max |ours - TRL| over every setting; metrics: TRL's logged value against our GRPOLossOutput field\n")
    f32, f64 = results["float32"]["losses"], results["float64"]["losses"]
    header = ("loss", "cases", "f32 loss", "f32 grad", "f32 metrics", "f64 loss", "f64 grad", "f64 metrics",
              "largest |loss|")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, r in f32.items():
        r64 = f64[label]
        print(f"| {label} | {r['cases']} | {fmt(r['loss'])} | {fmt(r['grad'])} | {metrics_cell(r)} | "
              f"{fmt(r64['loss'])} | {fmt(r64['grad'])} | {metrics_cell(r64)} | {r['largest |loss|']:.3g} |")
    print("\ninputs (float64): " + ", ".join(f"{k} {v}" for k, v in results["float64"]["coverage"].items()))
    print("\n| scale_rewards | cases (k = 1, 2, 4, 8) | f32 advantages | f64 advantages |\n|---|---|---|---|")
    for key, r in results["float32"]["advantages"].items():
        print(f"| {key} | {r['cases']} | {fmt(r['advantages'])} | "
              f"{fmt(results['float64']['advantages'][key]['advantages'])} |")
    for name, why in TRL_FLOAT32.items():
        print(f"(float32 in TRL) {name}: {why}")
    print("\nharness check, deliberate mismatches (float64 |ours - TRL| of the loss): " + "; ".join(
        f"{label} {v:.2g}" for label, v in results["float64"]["mismatches"].items()))
    print(f"\n{time.perf_counter() - start:.1f} s")
    if out.json:
        out.json.write_text(json.dumps({"trl": trl.__version__, "torch": torch.__version__, "results": results},
                                       indent=1))
    def tolerance(dtype: str, what: str) -> float:
        return 1e-12 if dtype == "float64" and what.removeprefix("metric ") not in TRL_FLOAT32 else 1e-5

    bad = [(key, label, what) for key in results for label, r in results[key]["losses"].items()
           for what, v in r.items() if what not in ("cases", "largest |loss|") and v > tolerance(key, what)]
    bad += [(key, label) for key in results for label, r in results[key]["advantages"].items()
            if r["advantages"] > tolerance(key, "advantages")]
    bad += [(key, label, "mismatch not seen") for key in results for label, v in results[key]["mismatches"].items()
            if v < 1e-3]
    if bad:
        print(f"MATERIAL DIFFERENCES: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
