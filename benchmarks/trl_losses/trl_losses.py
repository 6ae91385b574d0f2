"""Every registered DPO-family and KTO loss of lightning-post against TRL 1.16's own loss code, on the same random
log-probabilities; prints the largest difference per loss (``benchmarks/trl_losses/TRL_LOSSES.md`` records a run).

Run it with the TRL environment's Python (``bash benchmarks/setup_trl.sh`` builds it)::

    benchmarks/.trl-venv/bin/python benchmarks/trl_losses/trl_losses.py [--json PATH]

Our side is the pure loss functions of ``lightning_post.losses`` (they need only torch, so the repository root is put
on ``sys.path``; lightning is not imported). TRL's side is TRL's own code, called, not restated:

* ``DPOTrainer._compute_loss`` (TRL 1.16 has no separate ``dpo_loss``: the loss sits inside it), bound to a minimal
  stand-in ``self`` (a ``SimpleNamespace`` with the attributes it reads: ``beta``, ``loss_types``, ``label_smoothing``,
  ``args.discopop_tau``, ..., an identity ``accelerator``) and given a stand-in model whose "forward" returns fixed
  per-token log-probabilities. Reference log-probabilities go in as precomputed (``precompute_ref_logps=True``).
  It returns only the batch mean, so the per-pair losses and rewards are read from its locals
  (``per_sequence_loss``, ``chosen_rewards``, ``rejected_rewards``) as it returns, via ``sys.settrace``; the mean it
  returns is compared too.
* ``KTOTrainer._compute_loss`` likewise (with TRL's ``_compute_kl_logps`` bound to the stand-in for the KL
  reference point from the mismatched "KL" completions); per-example ``losses``, ``kl`` and rewards from its locals.
* ``trl.experimental.cpo.CPOTrainer.cpo_loss`` (SimPO is CPO's ``loss_type="simpo"``) and
  ``trl.experimental.orpo.ORPOTrainer.odds_ratio_loss``: plain methods on log-probabilities, called with a stand-in
  ``self``. ORPO's returns ``beta * log sigma(log odds ratio)``, which ORPO subtracts (``loss = nll - losses.mean()``);
  ours returns the loss term itself, so it is compared with the negated value.

Log-probabilities: 64 pairs (KTO: 64 examples, about 60 % desirable) of random per-token log-probabilities with random
prompt and reply lengths; the sequence values are summed from the very tensor TRL sums, so both sides see bit-equal
inputs. Losses that live on per-token averages (``ipo``, ``sigmoid_norm``, ``simpo``, ``orpo``) get
``sum / reply tokens`` as DPOModule passes them (TRL divides inside ``_compute_loss`` for ``ipo`` / ``sigmoid_norm``;
CPO / ORPO take averaged log-probabilities as input). Run in float32 and in float64.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import re
import sys
import time
import types
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: our losses, without installing

from lightning_post.losses.kto import KTO_LOSSES, NEEDS_KL, kto_kl_estimate  # noqa: E402
from lightning_post.losses.preference import (  # noqa: E402
    DPO_LOSSES, LENGTH_NORMALISED, PAIR_INPUTS, REFERENCE_FREE, implicit_rewards,
)

from lightning_post.losses.settings import pick_settings  # noqa: E402

warnings.filterwarnings("ignore")  # TRL's experimental-API notices
import trl  # noqa: E402
from trl import DPOTrainer, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

SEED = 0
N_PAIRS = 64
SEQ_LEN = 32
BETAS = (0.05, 0.1, 0.5, 2.0)
DTYPES = (torch.float32, torch.float64)

#: our loss_type -> (TRL function, TRL loss_type); the DPO-family names TRL's DPOTrainer shares are the same strings
DPO_TO_TRL: dict[str, tuple[str, str | None]] = {
    **{name: ("DPOTrainer._compute_loss", name) for name in (
        "sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
        "apo_zero", "apo_down", "discopop", "sigmoid_norm")},
    "simpo": ("experimental.cpo.CPOTrainer.cpo_loss", "simpo"),
    "orpo": ("experimental.orpo.ORPOTrainer.odds_ratio_loss", None),
}
KTO_TO_TRL: dict[str, tuple[str, str]] = {name: ("KTOTrainer._compute_loss", name) for name in ("kto", "apo_zero_unpaired")}
#: where TRL computes in float32 whatever the input dtype, so the float64 run can only agree to float32 precision
TRL_FLOAT32: dict[str, str] = {
    "exo_pair": "DPOTrainer makes epsilon = torch.tensor(self.label_smoothing), a float32 tensor, so its log(eps) "
                "and log1p(-eps) are float32",
    "orpo": "ORPOTrainer.odds_ratio_loss casts the log-probs with .float()",
}
#: losses whose logged implicit rewards differ from TRL's by convention: DPOModule logs beta * (per-token average
#: log-ratio) for length-normalised losses (methods/dpo.py: average_logps, pair_logps -> preference_sums), TRL's
#: DPOTrainer logs beta * (summed log-ratio) whatever the loss
REWARDS_ON_AVERAGES = sorted(n for n in LENGTH_NORMALISED if DPO_TO_TRL[n][0] == "DPOTrainer._compute_loss")


def dpo_settings(name: str) -> list[dict]:
    """The settings grid of one DPO-family loss: every beta, times the label smoothing / gamma / tau it reads."""
    smoothing = {"robust": (0.0, 0.1, 0.3), "aot": (0.0, 0.1, 0.3), "aot_unpaired": (0.0, 0.1, 0.3),
                 "exo_pair": (1e-3, 0.1), "simpo": (0.0, 0.1)}.get(name, (0.0,))
    gammas = (0.5, 1.0) if name == "simpo" else (0.5,)
    taus = (0.05, 0.5) if name == "discopop" else (0.05,)
    return [{"beta": b, "label_smoothing": e, "gamma": g, "tau": t}
            for b, e, g, t in itertools.product(BETAS, smoothing, gammas, taus)]


# ---- calling TRL's code ----------------------------------------------------------------------------------------------
def call_and_capture(fn, args: tuple, names: tuple[str, ...]) -> tuple[object, dict]:
    """``fn(*args)``, with the values of its local variables ``names`` as it returns (read with ``sys.settrace``)."""
    captured: dict = {}
    code = fn.__code__

    def on_line(frame, event, arg):
        if event == "return":
            captured.update({n: frame.f_locals.get(n) for n in names})
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code is code else None

    sys.settrace(on_call)
    try:
        result = fn(*args)
    finally:
        sys.settrace(None)
    return result, captured


class StandInModel:
    """A "model" whose forward returns fixed per-token log-probabilities, looked up by the ``input_ids`` tensor."""

    training = True

    def __init__(self, tables: dict[int, torch.Tensor]):
        self.tables = tables  # id(input_ids) -> (rows, T - 1) log-probs of tokens 1..T-1, 0 outside the replies

    def __call__(self, input_ids, **_):
        log_probs = self.tables[id(input_ids)]
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                               aux_loss=None)


def stand_in_trainer(model: StandInModel, **attributes) -> SimpleNamespace:
    """The attributes TRL's ``_compute_loss`` reads, for one process without tensor parallelism."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    return SimpleNamespace(model=model, accelerator=accelerator, aux_loss_enabled=False, precompute_ref_logps=True,
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1, **attributes)


def random_rows(gen: torch.Generator, rows: int, dtype: torch.dtype, spread: float = 0.3):
    """Token ids, attention and reply masks ``(rows, T)`` and per-token log-probs of a reference and a policy,
    ``(rows, T - 1)``, zero outside the replies (what the model returns for labels of -100)."""
    prompt = torch.randint(1, 9, (rows,), generator=gen)
    reply = torch.minimum(torch.randint(1, 25, (rows,), generator=gen), SEQ_LEN - prompt)
    pos = torch.arange(SEQ_LEN)
    completion_mask = ((pos >= prompt[:, None]) & (pos < (prompt + reply)[:, None])).long()
    attention_mask = (pos < (prompt + reply)[:, None]).long()
    input_ids = torch.randint(0, 1000, (rows, SEQ_LEN), generator=gen)
    ref_tok = torch.log(torch.rand(rows, SEQ_LEN, generator=gen, dtype=torch.float64) * 0.98 + 0.02)
    pol_tok = ref_tok + spread * torch.randn(rows, SEQ_LEN, generator=gen, dtype=torch.float64) \
        + spread * torch.randn(rows, 1, generator=gen, dtype=torch.float64)
    mask = completion_mask[:, 1:].to(torch.float64)
    ref = (ref_tok[:, 1:] * mask).to(dtype)
    policy = (pol_tok[:, 1:].clamp(max=-1e-3) * mask).to(dtype)  # log-probs < 0 (ORPO's log(1 - p) needs p < 1)
    return input_ids, attention_mask, completion_mask, ref, policy


def sequence_logps(per_token: torch.Tensor) -> torch.Tensor:
    """Sum over the reply, exactly as TRL does (``log_probs[:, -(T - 1):].sum(dim=1)``)."""
    return per_token[:, -(SEQ_LEN - 1):].sum(dim=1)


# ---- the comparisons -------------------------------------------------------------------------------------------------
def max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Largest absolute difference and largest difference relative to ``max(1, |b|)``."""
    d = (a.double() - b.double()).abs()
    return d.max().item(), (d / b.double().abs().clamp(min=1)).max().item()


def compare_dpo(dtype: torch.dtype, gen: torch.Generator) -> dict[str, dict]:
    input_ids, attention_mask, completion_mask, ref_tok, pol_tok = random_rows(gen, 2 * N_PAIRS, dtype)
    model = StandInModel({id(input_ids): pol_tok})
    sums, ref_sums = sequence_logps(pol_tok), sequence_logps(ref_tok)  # (2B,) as [chosen; rejected]
    counts = completion_mask.sum(dim=1).clamp(min=1).to(dtype)  # reply tokens, as DPOModule counts them
    ref_chosen, ref_rejected = ref_sums.chunk(2)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    results = {}
    for name, loss_fn in DPO_LOSSES.items():
        average = name in LENGTH_NORMALISED  # DPOModule's pair_logps: sum / reply tokens for these
        pc, pr = (sums / counts if average else sums).chunk(2)
        rc, rr = (ref_sums / counts if average else ref_sums).chunk(2)
        if name in REFERENCE_FREE:
            rc = rr = None
        trl_fn, trl_type = DPO_TO_TRL[name]
        worst = defaultdict(float)
        for s in dpo_settings(name):
            ours = loss_fn(pc, pr, rc, rr, **pick_settings(loss_fn, len(PAIR_INPUTS), s))
            ours_rewards = torch.cat([implicit_rewards(pc, rc, s["beta"]), implicit_rewards(pr, rr, s["beta"])])
            if trl_fn == "DPOTrainer._compute_loss":
                this = stand_in_trainer(model, beta=s["beta"], loss_types=[trl_type], loss_weights=[1.0],
                                        label_smoothing=s["label_smoothing"], ld_alpha=None, use_weighting=False,
                                        f_divergence_type="reverse_kl", args=SimpleNamespace(discopop_tau=s["tau"]))
                mean, loc = call_and_capture(DPOTrainer._compute_loss, (this, model, inputs, False),
                                             ("per_sequence_loss", "chosen_rewards", "rejected_rewards"))
                theirs = loc["per_sequence_loss"]
                theirs_rewards = torch.cat([loc["chosen_rewards"], loc["rejected_rewards"]])
                worst["mean"] = max(worst["mean"], abs(ours.double().mean().item() - mean.item()))
                if average:  # the same rewards on summed log-probs, TRL's convention
                    on_sums = implicit_rewards(sums, ref_sums, s["beta"])
                    worst["rewards_on_sums"] = max(worst["rewards_on_sums"], max_diff(on_sums, theirs_rewards)[0])
            elif name == "simpo":
                this = SimpleNamespace(beta=s["beta"], label_smoothing=s["label_smoothing"], loss_type="simpo",
                                       simpo_gamma=s["gamma"], alpha=0.0, accelerator=SimpleNamespace(device="cpu"))
                theirs, chosen_r, rejected_r = CPOTrainer.cpo_loss(this, pc, pr)
                theirs_rewards = torch.cat([chosen_r, rejected_r])
            else:  # orpo: TRL returns beta * log sigma(log odds ratio), which ORPOTrainer subtracts
                this = SimpleNamespace(beta=s["beta"], accelerator=SimpleNamespace(device="cpu"))
                neg, chosen_r, rejected_r, _, _ = ORPOTrainer.odds_ratio_loss(this, pc, pr)
                theirs, theirs_rewards = -neg, torch.cat([chosen_r, rejected_r])
            loss_abs, loss_rel = max_diff(ours, theirs)
            reward_abs, _ = max_diff(ours_rewards, theirs_rewards)
            worst["loss"] = max(worst["loss"], loss_abs)
            worst["loss_rel"] = max(worst["loss_rel"], loss_rel)
            worst["rewards"] = max(worst["rewards"], reward_abs)
            worst["max_loss"] = max(worst["max_loss"], theirs.abs().max().item())
        results[name] = {"trl": f"{trl_fn} ({trl_type})" if trl_type else trl_fn, "cases": len(dpo_settings(name)),
                         **worst}

    # cDPO: our ``sigmoid`` with label_smoothing > 0. TRL 1.16's DPOTrainer ``sigmoid`` ignores label_smoothing (it
    # is documented for robust and exo_pair only), so its nearest own code is CPO's ``sigmoid`` (conservative,
    # label-smoothed, reference-free DPO on summed log-probs), which equals cDPO when the reference log-probs are 0.
    pc, pr = sums.chunk(2)
    zeros = torch.zeros_like(pc)
    worst = defaultdict(float)
    cases = list(itertools.product(BETAS, (0.1, 0.3)))
    for beta, eps in cases:
        ours = DPO_LOSSES["sigmoid"](pc, pr, zeros, zeros, beta=beta, label_smoothing=eps)
        this = SimpleNamespace(beta=beta, label_smoothing=eps, loss_type="sigmoid", alpha=0.0,
                               accelerator=SimpleNamespace(device="cpu"))
        theirs = CPOTrainer.cpo_loss(this, pc, pr)[0]
        loss_abs, loss_rel = max_diff(ours, theirs)
        worst["loss"], worst["loss_rel"] = max(worst["loss"], loss_abs), max(worst["loss_rel"], loss_rel)
        worst["max_loss"] = max(worst["max_loss"], theirs.abs().max().item())
    results["sigmoid, label_smoothing>0 (cDPO), reference 0"] = {
        "trl": "experimental.cpo.CPOTrainer.cpo_loss (sigmoid)", "cases": len(cases), **worst}
    return results


def compare_kto(dtype: torch.dtype, gen: torch.Generator) -> dict[str, dict]:
    input_ids, attention_mask, completion_mask, ref_tok, pol_tok = random_rows(gen, N_PAIRS, dtype)
    kl_ids, kl_attention, kl_completion, kl_ref_tok, kl_pol_tok = random_rows(gen, N_PAIRS, dtype)
    desirable = torch.rand(N_PAIRS, generator=gen) < 0.6
    policy, ref = sequence_logps(pol_tok), sequence_logps(ref_tok)
    order = torch.cat([desirable.nonzero().view(-1), (~desirable).nonzero().view(-1)])  # TRL: [desirable; undesirable]
    results = {}
    for name, loss_fn in KTO_LOSSES.items():
        worst, cases = defaultdict(float), 0
        # KL completions shifted so that the reference point is positive, and negative (clamped to 0)
        for beta, (w_d, w_u), kl_shift in itertools.product(BETAS, ((1.0, 1.0), (1.33, 0.75)), (0.05, -0.05)):
            cases += 1
            kl_pol = kl_pol_tok + kl_shift * (kl_pol_tok != 0)
            model = StandInModel({id(input_ids): pol_tok, id(kl_ids): kl_pol})
            kl_policy, kl_ref = sequence_logps(kl_pol), sequence_logps(kl_ref_tok)
            z0 = kto_kl_estimate(kl_policy, kl_ref) if name in NEEDS_KL else torch.zeros((), dtype=dtype)
            ours = loss_fn(policy, ref, desirable, z0, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
            ours_rewards = beta * (policy - ref)  # KTOModule's rewards/chosen and rewards/rejected, per example

            this = stand_in_trainer(model, beta=beta, loss_type=name, desirable_weight=w_d, undesirable_weight=w_u,
                                    calculate_KL=name == "kto", args=SimpleNamespace())
            this._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, this)
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
                     "label": desirable, "ref_logps": ref, "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention,
                     "KL_completion_mask": kl_completion, "ref_KL_logps": kl_ref}
            mean, loc = call_and_capture(KTOTrainer._compute_loss, (this, model, batch, False),
                                         ("losses", "kl", "chosen_rewards", "rejected_rewards"))
            loss_abs, loss_rel = max_diff(ours[order], loc["losses"])
            worst["loss"] = max(worst["loss"], loss_abs)
            worst["loss_rel"] = max(worst["loss_rel"], loss_rel)
            worst["mean"] = max(worst["mean"], abs(ours.double().mean().item() - mean.item()))
            worst["rewards"] = max(worst["rewards"], max_diff(
                ours_rewards[order], torch.cat([loc["chosen_rewards"], loc["rejected_rewards"]]))[0])
            if name in NEEDS_KL:
                worst["kl"] = max(worst["kl"], abs(z0.item() - loc["kl"].item()))
                worst["kl_clamped"] += float(loc["kl"].item() == 0)
            worst["max_loss"] = max(worst["max_loss"], loc["losses"].abs().max().item())
        trl_fn, trl_type = KTO_TO_TRL[name]
        results[name] = {"trl": f"{trl_fn} ({trl_type})", "cases": cases, **worst}
    return results


def trl_only_loss_types() -> dict[str, list[str]]:
    """Loss types TRL's trainers branch on (read from their source) that no loss of ours maps to."""
    def branches(fn) -> set[str]:
        return set(re.findall(r'loss_type == "([\w-]+)"', inspect.getsource(fn)))

    mapped_dpo = {t for fn, t in DPO_TO_TRL.values() if fn == "DPOTrainer._compute_loss"}
    return {
        "DPOTrainer": sorted(branches(DPOTrainer._compute_loss) - mapped_dpo),
        "KTOTrainer": sorted(branches(KTOTrainer._compute_loss) - set(KTO_TO_TRL)),
        "experimental CPOTrainer": sorted(branches(CPOTrainer.cpo_loss) - {"simpo"}),
    }


def fmt(x: float | None) -> str:
    return "-" if x is None else ("0" if x == 0 else f"{x:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    out = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for dtype in DTYPES:
        gen = torch.Generator().manual_seed(SEED)
        key = str(dtype).removeprefix("torch.")
        results[key] = {"dpo": compare_dpo(dtype, gen), "kto": compare_kto(dtype, gen)}
    lacking = trl_only_loss_types()
    print(f"lightning-post losses vs TRL {trl.__version__} (torch {torch.__version__}), {N_PAIRS} pairs / examples, "
          f"betas {BETAS}, seed {SEED}")
    print("max |ours - TRL| per example, over every setting (rel = relative to max(1, |TRL's loss|))\n")
    header = ("loss", "TRL function (loss_type)", "cases", "f32 loss", "f32 rel", "f32 rewards", "f32 mean",
              "f64 loss", "largest |loss|")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    f32, f64 = results["float32"], results["float64"]
    for family in ("dpo", "kto"):
        for name, r in f32[family].items():
            r64 = f64[family][name]
            rewards = fmt(r.get("rewards")) + (" (a)" if name in REWARDS_ON_AVERAGES else "")
            f64_loss = fmt(r64["loss"]) + (" (b)" if name in TRL_FLOAT32 else "")
            print(f"| {name} | {r['trl']} | {r['cases']} | {fmt(r['loss'])} | {fmt(r['loss_rel'])} | "
                  f"{rewards} | {fmt(r.get('mean'))} | {f64_loss} | {r['max_loss']:.3g} |")
    print("\n(a) convention, not the loss: DPOModule logs rewards on per-token averaged log-ratios for "
          f"{', '.join(REWARDS_ON_AVERAGES)}, TRL's DPOTrainer on summed ones; the same rewards on sums differ by "
          + ", ".join(f"{fmt(f32['dpo'][n]['rewards_on_sums'])} ({n})" for n in REWARDS_ON_AVERAGES))
    for name, why in TRL_FLOAT32.items():
        print(f"(b) {name}: TRL's code runs (partly) in float32 even for float64 inputs: {why}")
    for key in ("float32", "float64"):
        kto = results[key]["kto"]["kto"]
        print(f"\nKTO reference point z0 ({key}): max |ours - TRL's kl| = {fmt(kto['kl'])}; "
              f"{int(kto['kl_clamped'])} of {kto['cases']} settings clamped to 0")
    print("\nno TRL counterpart among our losses: none (every registered loss maps to a TRL function above)")
    for trainer, names in lacking.items():
        print(f"TRL {trainer} loss types we lack: {', '.join(names) if names else 'none'}")
    print(f"\n{time.perf_counter() - start:.1f} s")
    if out.json:
        out.json.write_text(json.dumps({"trl": trl.__version__, "torch": torch.__version__, "results": results,
                                        "trl_only": lacking}, indent=1))
    bad = [(k, fam, n) for k in results for fam in ("dpo", "kto") for n, r in results[k][fam].items()
           if not math.isfinite(r["loss"]) or r["loss_rel"] > (1e-10 if k == "float64" and n not in TRL_FLOAT32 else 1e-5)]
    if bad:
        print(f"MATERIAL DIFFERENCES: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
