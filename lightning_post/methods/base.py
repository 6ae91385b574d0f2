"""What every method shares: loading the policy, PEFT, the optimizer, and exact gradient accumulation.

The method maths stays in the subclasses (and in ``lightning_post.losses``). Methods built on
:class:`AccumulatingModule` implement :meth:`~AccumulatingModule.loss_units` (how many items the step's loss is
averaged over: response tokens for SFT, pairs for DPO) and :meth:`~AccumulatingModule.micro_step` (the summed loss of
one micro-batch); PPO, which runs several updates per batch, builds on :class:`PostTrainingModule` with its own
``training_step``.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.nn.parallel import DistributedDataParallel

from lightning_post.data.collate import attention_bias, split_batch, split_pairs
from lightning_post.records.tokenize import IGNORE_INDEX
from lightning_post.losses.logps import sum_by_row
from lightning_post.losses.sft import linear_cross_entropy, token_cross_entropy
from lightning_post.generation import generate_from_ids
from lightning_post.models.attention import VARLEN_ATTENTION, repad, unpad, varlen_kwargs
from lightning_post.errors import ConfigError
from lightning_post.models import loading, peft as peft_lib
from lightning_post.models.loading import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model_path
from lightning_post.models.peft import (
    PeftSettings, apply_peft, count_parameters, is_prompt_learning, quantization_config, unwrap_peft,
)
from lightning_post.optim import OptimSettings, build_optimizer, check_optim_settings
from lightning_post.strategies import (
    FSDP2Strategy, TiedHead, all_reduce_replicated, clip_sharded_grads, shard_decoder,
)

log = logging.getLogger(__name__)


class PostTrainingModule(L.LightningModule):
    """Base of every method. Optimisation is manual so that accumulation is exact (see :meth:`training_step`)."""

    method = "base"
    #: PEFT task type of the trained model (``SEQ_CLS`` keeps a classification head trainable)
    peft_task = "CAUSAL_LM"
    #: whether the module can answer prompts (sample generations are skipped otherwise)
    generates = True

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        dtype: str = "float32",
        attn_implementation: Optional[str] = "sdpa_varlen",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        peft: Optional[PeftSettings] = None,
        optim: OptimSettings = OptimSettings(),
        micro_batch_size: Optional[int] = None,
        gradient_clip_val: Optional[float] = 1.0,
    ):
        """The settings every method shares, declared once here. A method's ``__init__`` takes its own settings
        (keyword-only) and forwards ``*args, **kwargs`` to this one; jsonargparse follows them here, so ``--help`` and
        ``--print_config`` list these with the method's own, and ``self.hparams`` holds them all.

        Args:
            model_name_or_path: alias (``smollm2-135m-instruct``, ``tiny-llama``), local folder (e.g. an SFT export)
                or hub id of the model to start from.
            dtype: parameter dtype: ``float32``, ``bfloat16`` or ``float16``.
            attn_implementation: transformers attention: ``sdpa_varlen`` (padding-free: only the real tokens are
                computed, each sequence attending to itself; ``models/attention.py``), ``sdpa``, ``eager``,
                ``flash_attention_2`` (also padding-free).
            gradient_checkpointing: recompute activations in backward to save memory.
            trust_remote_code: allow model code from the checkpoint folder (off unless asked).
            peft: parameter-efficient method (LoRA, ...); omit for full fine-tuning. A reference model (DPO, KTO,
                PPO) is then the same network with its adapters disabled; a reward model's head always trains in full.
            optim: optimizer and learning-rate schedule (one schedule step per optimizer update).
            micro_batch_size: examples per forward/backward (rows; pairs for DPO and reward models; replies for
                PPO); the data batch (PPO: a minibatch) is one optimizer step, accumulated exactly (``null`` = all
                at once).
            gradient_clip_val: clip the global gradient norm to this value (``null`` = no clipping).
        """
        super().__init__()
        # settings are checked here, before the MLflow run exists: a wrong one costs no FAILED run
        loading.check_model_source(model_name_or_path)
        loading.check_dtype(dtype)
        loading.check_attention(attn_implementation)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ConfigError("model.micro_batch_size", f"must be >= 1 or null (the whole batch), got {micro_batch_size}")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ConfigError("model.gradient_clip_val", f"must be > 0 or null (no clipping), got {gradient_clip_val}")
        self.save_hyperparameters(logger=False)
        # typed settings for the code; plain dicts in hparams, so checkpoints load with weights_only=True
        self.peft = PeftSettings(**peft) if isinstance(peft, dict) else peft
        self.optim = OptimSettings(**optim) if isinstance(optim, dict) else optim
        peft_lib.check_peft_settings(self.peft)
        check_optim_settings(self.optim)
        for name, ok, rule in self.setting_rules():  # the subclass's own knobs (hparams holds every init argument)
            if not ok:
                raise ConfigError(f"model.{name}", f"must be {rule}, got {self.hparams.get(name)}")
        self.hparams["peft"] = dataclasses.asdict(self.peft) if self.peft is not None else None
        self.hparams["optim"] = dataclasses.asdict(self.optim)
        self.automatic_optimization = False
        self.model: Optional[torch.nn.Module] = None
        self.tokenizer = None

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        """``(setting, holds, rule)`` for the method's own knobs, checked at construction (before any run)."""
        return []

    # ---- model -------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the policy (and its tokenizer) once; Lightning calls this before fit/validate/test."""
        if self.model is not None:
            return
        hp = self.hparams
        self.check_strategy()
        model = self.load_backbone()
        if hp.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.model = apply_peft(model, self.peft, self.peft_task)
        self.model.train()  # from_pretrained returns eval mode, which would silence dropout (LoRA's too)
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDP2Strategy):
            shard_decoder(self.model, strategy.shard_mesh, strategy.reshard_after_forward, strategy.mixed_precision())
        self.tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
        # with PEFT only the adapters train, so checkpoints hold only them (the base is reloaded from its source)
        self.strict_loading = self.peft is None

    #: whether the method runs under FSDP2Strategy (PPO and CAI, which generate or train several networks, not yet)
    supports_sharding = True

    def check_strategy(self) -> None:
        """Refuse strategies that cannot run these modules, and hand gradient clipping to DeepSpeed.

        Every method backpropagates inside ``training_step`` (manual optimization, for exact accumulation). Lightning's
        ``FSDPStrategy`` (FSDP1) runs ``training_step`` inside the root unit's forward, where such a backward trips
        FSDP's state checks or leaves parameters unchanged (seen on an H200: DPO with LoRA stayed at log 2; Lightning
        issue #19685), so fully sharded training goes through :class:`~lightning_post.strategies.FSDP2Strategy`.
        DeepSpeed clips inside its engine: our ``gradient_clip_val`` goes into its config.
        """
        strategy = self._trainer.strategy if self._trainer is not None else None
        name = type(strategy).__name__
        if name == "FSDPStrategy":
            raise ValueError("trainer.strategy FSDPStrategy (FSDP1) cannot train lightning-post's modules (their "
                             "backward runs inside FSDP's root forward; Lightning issue #19685). Use "
                             "lightning_post.strategies.FSDP2Strategy: configs/strategies/fsdp.yaml")
        if isinstance(strategy, ModelParallelStrategy):
            if not isinstance(strategy, FSDP2Strategy):
                raise ValueError("trainer.strategy ModelParallelStrategy: lightning-post shards its models itself; "
                                 "use lightning_post.strategies.FSDP2Strategy (configs/strategies/fsdp.yaml)")
            if not self.supports_sharding:
                raise ValueError(f"{type(self).__name__} cannot run under FSDP2Strategy yet (it generates on one "
                                 "process or trains several networks); use configs/strategies/ddp.yaml or "
                                 "deepspeed.yaml")
            if quantization_config(self.peft) is not None:
                raise ValueError("FSDP2Strategy cannot shard a quantized (QLoRA) model; drop peft.quantize")
        if name == "DeepSpeedStrategy" and self.hparams.gradient_clip_val and isinstance(strategy.config, dict):
            strategy.config.setdefault("gradient_clipping", float(self.hparams.gradient_clip_val))

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded by FSDP2 (its gradients are DTensors, clipped and reduced differently)."""
        return self._trainer is not None and isinstance(self._trainer.strategy, FSDP2Strategy)

    def load_backbone(self) -> torch.nn.Module:
        """The transformers model this method trains (a causal LM unless a method needs another head)."""
        hp = self.hparams
        return load_causal_lm(hp.model_name_or_path, hp.dtype, hp.attn_implementation, hp.trust_remote_code,
                              quantization_config(self.peft))

    def parameter_counts(self) -> tuple[int, int]:
        return count_parameters(self.model)

    def on_fit_start(self) -> None:
        trainable, total = self.parameter_counts()
        log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        if self.logger is not None:
            self.logger.log_hyperparams({"params/trainable": trainable, "params/total": total})

    def prepare_data(self) -> None:
        """Everything that can fail on the user's settings or data, before the MLflow run exists (Lightning calls
        this hook, on one process per node, before it creates the run in ``setup``): :meth:`preflight`, then the
        data module's ``setup``, so that data problems found only while tokenising (nothing left after truncation,
        every pair identical) cost no FAILED run either. Its later ``setup`` call finds the splits built."""
        self.preflight()
        self.setup_data_now()

    def setup_data_now(self) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            fn = self.trainer.state.fn
            dm.setup(getattr(fn, "value", fn))

    def preflight(self) -> None:
        """Checks that need the model's files: the model source resolves (an alias is converted once per machine)
        and every PEFT target module exists in its architecture, built on the meta device (no weights are read)."""
        hp = self.hparams
        path = resolve_model_path(hp.model_name_or_path)
        if self.peft is not None and (Path(path) / "config.json").is_file():
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(path, trust_remote_code=hp.trust_remote_code)
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=hp.trust_remote_code)
            peft_lib.check_target_modules(skeleton, self.peft)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the class that wrote it: `--ckpt_path` with another method's config is refused before anything loads
        checkpoint["lightning_post"] = {"class": f"{type(self).__module__}.{type(self).__qualname__}"}
        if self.peft is not None:
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # random state (dropout masks, sampling) so that a resumed run continues like an uninterrupted one
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def forward_hidden(self, batch: dict) -> torch.Tensor:
        """Last hidden states ``(B, T, H)`` of the decoder.

        With a varlen attention (``sdpa_varlen``, flash attention) the batch is unpadded first (padding-free, see
        :mod:`lightning_post.models.attention`); otherwise packed rows get the 4D segment mask.
        """
        if is_prompt_learning(self.model):  # prefix tuning: PEFT's forward adds the learned key/value positions
            if int(batch["segment_ids"].max()) > 1:
                raise ValueError("prefix tuning cannot train on packed rows; set data.packing: false")
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True)
            return out.hidden_states[-1]  # (B, T, H)
        decoder = unwrap_peft(self.model).get_decoder()
        implementation = decoder.config._attn_implementation
        if implementation in VARLEN_ATTENTION:  # padding-free: only the real tokens go through the model
            flat = unpad(batch)
            out = decoder(input_ids=flat["input_ids"], position_ids=flat["position_ids"],
                          **varlen_kwargs(flat["cu_seqlens"], implementation, flat["input_ids"].device))
            return repad(out.last_hidden_state, flat["keep"])  # (B, T, H)
        if int(batch["segment_ids"].max()) > 1:  # packed: keep examples from attending to each other
            mask = attention_bias(batch["segment_ids"])  # (B, 1, T, T)
        else:
            mask = batch["attention_mask"]  # (B, T)
        out = decoder(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])
        return out.last_hidden_state

    def lm_head(self) -> torch.nn.Module:
        return unwrap_peft(self.model).get_output_embeddings()

    def head_losses(self, hidden: torch.Tensor, targets: torch.Tensor,
                    chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token negative log-likelihood ``(N,)`` of ``targets`` under the LM head at ``hidden (N, H)``, and the
        head's arg-max ``(N,)``: chunked (no ``(N, V)`` logits) for a bias-free linear head, else plain logits."""
        head = self.lm_head()
        if isinstance(head, (torch.nn.Linear, TiedHead)) and head.bias is None:
            return linear_cross_entropy(hidden, head.weight, targets, chunk_size)
        logits = head(hidden)  # (N, V)
        return token_cross_entropy(logits, targets), logits.detach().argmax(-1)

    def reply_logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the summed log-probability of its labelled (reply) tokens ``(R,)`` and their count ``(R,)``.

        Logits are computed only where the next token is labelled, so the LM head never sees prompt positions.
        """
        hidden, targets, select = self.labelled_hidden(batch)  # (N, H), (N,), (R, T-1)
        token_logps = -self.head_losses(hidden, targets)[0]  # (N,)
        rows = select.nonzero()[:, 0]  # (N,) row of each selected token
        return sum_by_row(token_logps, rows, select.shape[0]), select.sum(1)

    def labelled_hidden(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states ``(N, H)`` at the N positions whose next token is labelled, those tokens ``(N,)``, and
        where they are: ``select (R, T-1)`` (the LM head needs no other position)."""
        targets = batch["labels"][:, 1:]  # (R, T-1): token t+1 is predicted at position t
        select = targets != IGNORE_INDEX  # (R, T-1)
        return self.forward_hidden(batch)[:, :-1][select], targets[select], select

    # ---- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(params, self.optim, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _sync_context(self, last: bool):
        """Skip DDP's gradient all-reduce on every micro-batch but the last of the step."""
        model = self.trainer.strategy.model
        if not last and isinstance(model, DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    def finish_gradients(self, optimizer) -> torch.Tensor:
        """After the step's backward passes: reduce what is left to reduce, clip to ``gradient_clip_val`` and return
        the global gradient norm before clipping."""
        clip = self.hparams.gradient_clip_val
        if self.sharded:  # FSDP2 has reduce-scattered its shards; parameters outside it are averaged here
            params = [p for p in self.parameters() if p.requires_grad]
            all_reduce_replicated(params)
            return clip_sharded_grads(params, clip)
        grad_norm = self._grad_norm()
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        return grad_norm

    def optimizer_step(self, optimizer, scheduler) -> torch.Tensor:
        """The tail of every update, once the step's gradients are in: reduce and clip them
        (:meth:`finish_gradients`, FSDP2- and DeepSpeed-aware), step, clear the gradients, advance the schedule.
        Returns the global gradient norm before clipping."""
        grad_norm = self.finish_gradients(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return grad_norm

    def _grad_norm(self) -> torch.Tensor:
        """Global gradient norm; NaN where the gradients are not visible as ``p.grad`` (DeepSpeed partitions them)."""
        grads = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.tensor(float("nan"))

    # ---- generation --------------------------------------------------------------------------------------------
    def generate_from_ids(self, prompts: list[list[int]], max_new_tokens: int = 64, **kwargs) -> list[str]:
        """Greedy (or, with ``do_sample=True``, sampled) completions of already-tokenised prompts."""
        return generate_from_ids(self.model, self.tokenizer, prompts, max_new_tokens, **kwargs)


class AccumulatingModule(PostTrainingModule, abc.ABC):
    """A method whose optimizer step is one batch accumulated exactly over micro-batches (SFT, reward, DPO, KTO).

    A subclass defines :meth:`loss_units` and :meth:`micro_step`; the other hooks have defaults.
    """

    @abc.abstractmethod
    def loss_units(self, batch: dict) -> torch.Tensor:
        """Number of items the step loss is averaged over in this (local) batch."""

    @abc.abstractmethod
    def micro_step(self, micro_batch: dict) -> dict[str, torch.Tensor]:
        """Return ``{"loss_sum": scalar with grad, <stat>_sum: detached scalars}`` for one micro-batch."""

    def prepare_step(self, batch: dict) -> None:
        """Work on the whole step's batch before its micro-batches (KTO: the KL reference point)."""

    def batch_items(self, batch: dict) -> int:
        """Examples in a batch (rows; pairs for preference methods)."""
        return batch["input_ids"].shape[0]

    def micro_batches(self, batch: dict) -> list[dict]:
        """Split an optimizer step's batch into micro-batches of ``micro_batch_size`` examples."""
        return split_batch(batch, self.hparams.micro_batch_size or batch["input_ids"].shape[0])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One optimizer step over the whole batch, accumulated over micro-batches.

        The loss of a step is ``sum of per-item losses over all micro-batches and devices / total items``. The
        denominator is known before the first backward, so each micro-batch contributes ``its sum * W / total``
        (``W`` devices; DDP averages gradients over them). Hence 1 micro-batch of 8 and 8 of 1 give the same update.
        """
        start = time.perf_counter()
        opt, sched = self.optimizers(), self.lr_schedulers()
        strategy = self.trainer.strategy
        # step 1: the denominator, over every device
        units = strategy.reduce(self.loss_units(batch).float(), reduce_op="sum")
        scale = self.trainer.world_size / units.clamp(min=1)
        # step 2: forward/backward per micro-batch
        self.prepare_step(batch)
        micro = self.micro_batches(batch)
        if len(micro) > 1 and type(strategy).__name__ == "DeepSpeedStrategy":
            raise ValueError("with DeepSpeed, one forward/backward per step: set model.micro_batch_size to null "
                             "(or to data.batch_size)")
        sums: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro):
            with self._sync_context(last=i == len(micro) - 1):
                out = self.micro_step(mb)
                self.manual_backward(out["loss_sum"] * scale)
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach()
        # step 3: clip, step, schedule
        grad_norm = self.optimizer_step(opt, sched)
        # step 4: metrics of the step over every device
        totals = {k: strategy.reduce(v.float(), reduce_op="sum") for k, v in sums.items()}
        tokens = strategy.reduce(batch["attention_mask"].sum().float(), reduce_op="sum")
        metrics = self.step_metrics(totals, units)
        metrics["train/grad_norm"] = grad_norm
        metrics["train/lr"] = torch.tensor(sched.get_last_lr()[0])
        metrics["train/tokens_per_sec"] = tokens / (time.perf_counter() - start)
        self.log_dict(metrics, prog_bar=False, on_step=True, on_epoch=False, batch_size=self.batch_items(batch))
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return metrics["train/loss"]

    def step_metrics(self, totals: dict[str, torch.Tensor], units: torch.Tensor) -> dict[str, torch.Tensor]:
        """Turn summed statistics of a step into logged metrics (subclasses add theirs)."""
        return {"train/loss": totals["loss_sum"] / units.clamp(min=1)}


class PairwiseModule(AccumulatingModule):
    """A method trained on pairs batched as ``[chosen; rejected]`` rows (reward model, DPO): the items of a batch,
    of its micro-batches and of its loss are pairs, never split from their other half."""

    def batch_items(self, batch: dict) -> int:
        return batch["index"].shape[0]

    def micro_batches(self, batch: dict) -> list[dict]:
        return split_pairs(batch, self.hparams.micro_batch_size or self.batch_items(batch))

    def loss_units(self, batch: dict) -> torch.Tensor:
        return torch.tensor(self.batch_items(batch), device=batch["input_ids"].device)
