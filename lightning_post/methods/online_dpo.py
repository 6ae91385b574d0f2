"""OnlineDPOModule: DPO on pairs of the policy's own replies, sampled and judged at every step (Guo et al. 2024,
"Direct Language Model Alignment from Online AI Feedback", https://arxiv.org/abs/2402.04792; TRL's
``OnlineDPOTrainer``, ``trl/experimental/online_dpo/``)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torchmetrics import CatMetric

from lightning_post.data.collate import collate_rows
from lightning_post.losses.preference import LENGTH_NORMALISED, REFERENCE_FREE
from lightning_post.methods.base import PairwiseModule
from lightning_post.methods.collapse import STATISTICS, reply_statistics
from lightning_post.methods.dpo import (
    PairLogps, combined_preference_loss, loss_setting_rules, pair_logps, preference_sums, selected_losses,
)
from lightning_post.methods.reference import ReferenceModelMixin
from lightning_post.methods.rollout import OnPolicyModule, Replies
from lightning_post.models.loading import check_model_source
from lightning_post.records.tokenize import IGNORE_INDEX, Tokenized
from lightning_post.scoring.judges import DEFAULT_QUESTION, LLMJudge

#: a pairwise verdict on replies (a, b) as the values :func:`order_pairs` reads, and as a win of reply a
VERDICT_ORDER = {"A": (1.0, 0.0), "B": (0.0, 1.0), "tie": (0.5, 0.5)}


def order_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the chosen (higher-scored) and the rejected reply of every prompt whose two replies' scores differ;
    ``scores (2B,)`` are in sampling order ``[prompt 0 a, prompt 0 b, prompt 1 a, ...]``. A tie is left out: it says
    nothing about which reply is better.

    >>> order_pairs(torch.tensor([0.2, 0.9, 1.0, 1.0, 0.5, -0.5]))
    (tensor([1, 4]), tensor([0, 5]))
    """
    a, b = scores.view(-1, 2).unbind(1)  # (B,), (B,)
    first = torch.arange(0, scores.numel(), 2, device=scores.device)  # (B,) row of each prompt's reply a
    a_wins = a > b
    decided = a != b
    return torch.where(a_wins, first, first + 1)[decided], torch.where(a_wins, first + 1, first)[decided]


def verdict_order(verdicts: list[str]) -> torch.Tensor:
    """Values ``(2B,)`` in sampling order for :func:`order_pairs` from a pairwise judge's verdict on each prompt's
    replies (a, b): ``A`` -> (1, 0), ``B`` -> (0, 1), ``tie`` -> (0.5, 0.5), so the judge's reply is chosen and a tie
    is left out.

    >>> order_pairs(verdict_order(["B", "tie", "A"]))
    (tensor([1, 4]), tensor([0, 5]))
    """
    return torch.tensor([value for v in verdicts for value in VERDICT_ORDER[v]])


def reply_pairs(replies: Replies, chosen: list[int], rejected: list[int], pad_id: int) -> dict:
    """Rows ``chosen`` and ``rejected`` of sampled replies as a pair batch like
    :func:`~lightning_post.data.collate.collate_pairs` makes: ``[chosen; rejected]`` rows, right-padded, each the
    prompt then the reply, labels on the reply tokens (EOS included); per pair ``index`` and ``weight`` 1."""

    def example(row: int) -> Tokenized:
        ids = replies.seq["input_ids"][row][replies.seq["attention_mask"][row].bool()].tolist()  # prompt, then reply
        prompt = len(ids) - int(replies.mask[row].sum())
        return Tokenized(ids, [IGNORE_INDEX] * prompt + ids[prompt:])

    batch = collate_rows([[example(row)] for row in [*chosen, *rejected]], pad_id)
    batch["index"] = torch.arange(len(chosen))
    batch["weight"] = torch.ones(len(chosen))
    return batch


class OnlineDPOModule(ReferenceModelMixin, OnPolicyModule, PairwiseModule):
    """Online DPO: the DPO family of losses on pairs that the policy samples and a judge orders, step by step.

    Each training step takes one batch of prompts (:class:`~lightning_post.data.prompts.PromptDataModule`) and:

    1. sample: two replies per prompt (``temperature``, ``top_p``, ``max_new_tokens``), each ending at its first
       EOS;
    2. judge: the reward model (``reward_model``), ``reward_fn`` or ``reward_funcs`` scores every reply (less
       ``missing_eos_penalty`` without EOS); the higher-scored reply of a prompt is chosen, the other rejected, and a
       prompt whose two replies tie is skipped (``objective/tie_share``). Or ``llm_judge``, a causal LM, compares
       the two replies of each prompt in both orders (:class:`~lightning_post.scoring.judges.LLMJudge`): its verdict
       picks chosen and rejected, a tie (``p_a`` within ``llm_judge_tie_band`` of 0.5) is skipped;
    3. pairs: the judged pairs batched as ``[chosen; rejected]`` rows, labels on the reply tokens;
    4. loss: ``loss_type`` (any registered DPO-family loss, ``loss_weights`` for a mixture) on the policy's and the
       reference's reply log-probs, as :class:`~lightning_post.methods.dpo.DPOModule` computes it; the reference is
       the same network with its adapters disabled under LoRA, else a frozen copy (or ``reference_model``); one
       optimizer step, accumulated exactly over micro-batches of ``micro_batch_size`` pairs.

    Unlike TRL, where the first reply wins a tie, a tied pair is not trained on. Validation answers every held-out
    prompt greedily and logs the judge's mean score, ``val/score``; with ``llm_judge``, ``val/win_rate``: the share
    of prompts whose greedy answer the judge prefers to the reference's (a tie counts half).
    """

    supports_sharding = False  # generation on one process: not under FSDP2 yet (as PPO)

    method = "online_dpo"
    extra_judges = (("llm_judge", "a causal LM that compares the two replies"),)

    def __init__(
        self,
        *args,
        loss_type: Union[str, list[str]] = "sigmoid",
        loss_weights: Optional[list[float]] = None,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        discopop_tau: float = 0.05,
        loss_settings: Optional[dict[str, float]] = None,
        reference_model: Optional[str] = None,
        llm_judge: Optional[str] = None,
        llm_judge_question: str = DEFAULT_QUESTION,
        llm_judge_tie_band: float = 0.05,
        **kwargs,
    ):
        """
        Args:
            loss_type: a registered DPO-family loss (``sigmoid`` = DPO, ``ipo``, ``hinge``, ``robust``, ``simpo``,
                ...; see DPOModule), or a list of them to combine.
            loss_weights: weight of each loss in a list (``null`` = 1 each).
            beta: inverse temperature of the implicit reward (IPO's tau; SimPO's beta).
            label_smoothing: assumed label-flip rate of the judge for ``sigmoid`` (cDPO), ``robust``, ``simpo``,
                ``aot*``; the target's mass on the rejected reply for ``exo_pair``.
            simpo_gamma: SimPO's target reward margin.
            discopop_tau: temperature of DiscoPOP's blend.
            loss_settings: settings of losses that have their own, by the name in the loss's signature.
            reference_model: a different reference model (folder or id); ``null`` = the starting policy.
            llm_judge: instead of ``reward_model``, ``reward_fn`` or ``reward_funcs``, a causal LM (alias such as
                ``smollm2-135m-instruct``, folder or hub id) asked which of each prompt's two replies is better, in
                both orders; its verdict picks chosen and rejected. Loaded once, frozen, not in checkpoints.
            llm_judge_question: the question the LLM judge answers with (A) or (B).
            llm_judge_tie_band: with ``llm_judge``, a prompt whose probability that its first reply is the better is
                within this of 0.5 is a tie, and skipped.
        """
        super().__init__(*args, **kwargs)
        if llm_judge is not None:
            check_model_source(llm_judge, "model.llm_judge")
        self._llm_judge: Optional[LLMJudge] = None  # a plain attribute: neither in state_dict nor trained
        self.loss_types, self.loss_weights, self.loss_kwargs = selected_losses(OnlineDPOModule, self.hparams)
        self.reference_free = all(t in REFERENCE_FREE for t in self.loss_types)
        self.average_logps = self.loss_types[0] in LENGTH_NORMALISED  # metrics show what the first loss sees
        self._frozen_reference: list[torch.nn.Module] = []  # a list hides it from state_dict and the optimizer
        self.val_scores, self.val_length = CatMetric(), CatMetric()

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [*super().setting_rules(), *loss_setting_rules(hp),
                ("llm_judge_tie_band", 0 <= hp.llm_judge_tie_band < 0.5, "in [0, 0.5)"),
                ("missing_eos_penalty", hp.llm_judge is None or hp.missing_eos_penalty is None,
                 "null with llm_judge (the judge compares the replies as they are)")]

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        hp = self.hparams
        if not self.reference_free or hp.llm_judge is not None:  # the LLM judge's validation compares with it
            self.setup_reference()
        if hp.llm_judge is not None:
            self._llm_judge = LLMJudge(hp.llm_judge, hp.llm_judge_question, hp.llm_judge_tie_band,
                                       hp.micro_batch_size or 8, hp.dtype)  # eval mode, requires_grad off
            self._llm_judge.gen.progress = False  # no progress bar at every step

    def compare_replies(self, records: list[dict], first: list[str], second: list[str]) -> list[dict]:
        """The LLM judge's verdict on replies ``first[i]`` (A) and ``second[i]`` (B) to prompt ``records[i]``, asked
        in both orders: ``{"verdict", "p_a", ...}`` per prompt (:meth:`LLMJudge.compare`)."""
        self._llm_judge.gen.model.to(self.device)  # loaded on the CPU: the policy moves to its device after loading
        return self._llm_judge.compare([r["prompt"] for r in records], first, second)

    def judge_pairs(self, replies: Replies, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each reply's score ``(2B,)`` and the values ``(2B,)`` that order each prompt's two (:func:`order_pairs`).
        With ``reward_model``, ``reward_fn`` or ``reward_funcs`` both are the reply's score (less
        ``missing_eos_penalty``); with ``llm_judge`` the score is the judge's probability that the reply is the better
        of its two (``p_a``, ``1 - p_a``), and the order is the judge's verdict."""
        if self.hparams.llm_judge is None:
            scores = self.judge(replies)
            return scores, scores
        verdicts = self.compare_replies(replies.records[::2], texts[::2], texts[1::2])
        p_a = torch.tensor([v["p_a"] for v in verdicts], dtype=torch.float32, device=self.device)  # (B,)
        order = verdict_order([v["verdict"] for v in verdicts]).to(self.device)
        return torch.stack([p_a, 1 - p_a], 1).flatten(), order  # (B, 2) -> (2B,): [a, b] of each prompt

    # ---- steps 1-3: judged pairs -----------------------------------------------------------------------------------
    @torch.no_grad()
    def judged_pairs(self, batch: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        """The step's pair batch (on the policy's device) and the judge's statistics of this process, as sums and
        counts (:meth:`judge_metrics` turns them into metrics over every process)."""
        # step 1: two replies per prompt, rows [prompt 0 a, prompt 0 b, prompt 1 a, ...]
        replies = self.rollouts.sample(batch, 2, do_sample=True)
        ids, texts = self.rollouts.decode(replies)
        # step 2: judge; the better reply of each prompt is chosen, ties are left out
        scores, order = self.judge_pairs(replies, texts)  # (2B,), (2B,)
        chosen, rejected = order_pairs(order)  # (M,), (M,) rows
        # step 3: [chosen; rejected] rows
        if len(chosen):
            pairs = reply_pairs(replies, chosen.tolist(), rejected.tolist(), self.tokenizer.pad_token_id)
        else:
            # every prompt tied: a stand-in pair of weight 0 keeps this process's forward, backward and collectives
            # in step with the other processes'
            pairs = reply_pairs(replies, [0], [1], self.tokenizer.pad_token_id)
            pairs["weight"].zero_()
        lengths = replies.mask.sum(1).float()  # (2B,)
        sums = {"scores": scores.sum(), "replies": torch.tensor(float(len(scores))),
                "scores_chosen": scores[chosen].sum(), "scores_rejected": scores[rejected].sum(),
                "length_chosen": lengths[chosen].sum(), "length_rejected": lengths[rejected].sum(),
                "pairs": torch.tensor(float(len(chosen))), "prompts": torch.tensor(float(len(scores) // 2)),
                **{name: torch.tensor(value) for name, value in
                   reply_statistics(ids, texts, self.tokenizer.eos_token_id).items()}}
        return ({k: v.to(self.device) for k, v in pairs.items()},
                {k: v.float().to(self.device) for k, v in sums.items()})

    def judge_metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``objective/*``: the judge's mean score of all replies, of the chosen and the rejected ones, their margin,
        the share of prompts whose replies tied, reply lengths, EOS rate and distinct-n, over every process (chosen
        and rejected: 0 at a step where every prompt tied). With ``llm_judge`` a score is the judge's probability that
        the reply is the better of its two: ``objective/scores`` is 0.5, ``scores_rejected`` is 1 - ``scores_chosen``.
        """
        strategy = self.trainer.strategy
        # the reply statistics are this process's averages: their mean; the rest are sums and counts
        total = {k: strategy.reduce(v, reduce_op="mean" if k in STATISTICS else "sum") for k, v in sums.items()}
        pairs = total["pairs"].clamp(min=1)
        chosen, rejected = total["scores_chosen"] / pairs, total["scores_rejected"] / pairs
        return {"objective/scores": total["scores"] / total["replies"], "objective/scores_chosen": chosen,
                "objective/scores_rejected": rejected, "objective/scores_margin": chosen - rejected,
                "objective/tie_share": 1 - total["pairs"] / total["prompts"],
                "objective/length_chosen": total["length_chosen"] / pairs,
                "objective/length_rejected": total["length_rejected"] / pairs,
                **{f"objective/{k}": total[k] for k in STATISTICS}}

    # ---- steps 4-5: the DPO-family loss on the judged pairs, one optimizer step -----------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pairs, sums = self.judged_pairs(batch)  # steps 1-3
        loss = super().training_step(pairs, batch_idx)  # step 4: exact accumulation over micro-batches of pairs
        metrics = self.judge_metrics(sums)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch["records"]))
        self.watch_collapse({name: float(metrics[f"objective/{name}"]) for name in STATISTICS})
        return loss

    def loss_units(self, batch: dict) -> torch.Tensor:
        return batch["weight"].sum()  # the judged pairs (a stand-in pair of weight 0 counts none)

    def micro_step(self, micro_batch: dict) -> dict[str, torch.Tensor]:
        # the no-grad reference forward first, as in DPOModule (FSDP's backward hooks)
        ref_sums = None if self.reference_free else self.reference_logps(micro_batch)  # (2B,)
        sums, counts = self.reply_logps(micro_batch)  # (2B,), (2B,)
        losses = combined_preference_loss(self.loss_types, self.loss_weights, sums, ref_sums, counts,
                                          **self.loss_kwargs)  # (B,)
        keep = micro_batch["weight"] > 0  # (B,)
        policy = pair_logps(sums, counts, self.average_logps)
        ref = pair_logps(ref_sums, counts, self.average_logps) if ref_sums is not None else None
        stats = preference_sums(PairLogps(*(side[keep] for side in policy)),
                                PairLogps(*(side[keep] for side in ref)) if ref is not None else None,
                                self.hparams.beta)
        return {"loss_sum": (losses * micro_batch["weight"]).sum(), **stats}

    def step_metrics(self, totals: dict[str, torch.Tensor], units: torch.Tensor) -> dict[str, torch.Tensor]:
        """``train/loss`` and DPO's ``train/rewards/*`` (implicit rewards) and ``train/logps/*``, per judged pair."""
        n = units.clamp(min=1)
        return {f"train/{k.removesuffix('_sum')}": v / n for k, v in totals.items()}  # loss_sum -> train/loss

    # ---- validation: the judge's score of greedy answers to held-out prompts -------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        replies = self.rollouts.sample(batch, 1, do_sample=False)
        if self.hparams.llm_judge is None:
            self.val_scores.update(self.rollouts.score(replies))
        else:  # a pairwise judge has no score of one answer: the policy's against the reference's, both greedy
            with self._reference_context():
                reference = self.rollouts.sample(batch, 1, do_sample=False)
            verdicts = self.compare_replies(replies.records, self.rollouts.decode(replies)[1],
                                            self.rollouts.decode(reference)[1])
            self.val_scores.update(torch.tensor([VERDICT_ORDER[v["verdict"]][0] for v in verdicts]))
        self.val_length.update(replies.mask.sum(1).float())

    def on_validation_epoch_end(self) -> None:
        name = "val/score" if self.hparams.llm_judge is None else "val/win_rate"
        self.log_dict({name: self.val_scores.compute().mean(), "val/length": self.val_length.compute().mean()},
                      prog_bar=True)
        self.val_scores.reset()
        self.val_length.reset()
