"""Fully sharded data parallel for lightning-post's modules: FSDP2 (``torch.distributed.fsdp.fully_shard``).

Lightning's ``FSDPStrategy`` (FSDP1) runs ``training_step`` inside the root unit's forward, where our manual
backward breaks (Lightning issue #19685). FSDP2 shards parameters in place and has no wrapper forward, so the modules
keep their exact micro-batch accumulation. :class:`FSDP2Strategy` is Lightning's ``ModelParallelStrategy`` with every
process on every node in one sharding dimension; the module shards its own model in ``configure_model``
(:func:`shard_decoder`): each decoder layer is a unit and the decoder (embeddings, final norm) the root unit.

Parameters outside the decoder (a reward head, an untied LM head) stay whole on every process; their gradients are
averaged like DDP's (:func:`all_reduce_replicated`). Runs on GPUs (NCCL) and on CPU processes (gloo)::

    lightning-post fit --config configs/sft/default.yaml --config configs/strategies/fsdp.yaml
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover
    from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from lightning_post.models.peft import is_prompt_learning, unwrap_peft

PARAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel with FSDP2 over all processes (``trainer.strategy`` in the YAML)."""

    strategy_name = "fsdp2"

    def __init__(self, reshard_after_forward: bool = True, param_dtype: Optional[str] = None,
                 save_distributed_checkpoint: bool = False, process_group_backend: Optional[str] = None,
                 timeout: Optional[timedelta] = timedelta(minutes=30)):
        """
        Args:
            reshard_after_forward: free each layer's gathered weights after its forward (ZeRO-3: least memory) or
                keep them until its backward (ZeRO-2 like: one all-gather fewer per layer and step).
            param_dtype: compute dtype of the gathered weights (``bfloat16``: FSDP2's mixed precision; the shards,
                optimizer state and gradient reduction stay in the model's dtype); ``null`` = the model's dtype.
            save_distributed_checkpoint: each process writes its shard into a checkpoint folder; ``false`` gathers
                one ordinary ``.ckpt`` file on rank 0 (what ``evaluate --model <ckpt>`` and resuming on another
                process count read).
            process_group_backend: ``nccl`` / ``gloo``; ``null`` picks by device.
            timeout: collective timeout.
        """
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        if param_dtype is not None and param_dtype not in PARAM_DTYPES:
            raise ValueError(f"FSDP2Strategy param_dtype {param_dtype!r}: choose from {sorted(PARAM_DTYPES)} or null")
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype = param_dtype

    def setup_environment(self) -> None:
        # one sharding dimension over every process of every node (Lightning's "auto" would make it the node count)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @property
    def shard_mesh(self) -> DeviceMesh:
        return self.device_mesh["data_parallel"]

    def mixed_precision(self) -> MixedPrecisionPolicy:
        dtype = PARAM_DTYPES[self.param_dtype] if self.param_dtype else None
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)


class TiedHead(torch.nn.Module):
    """An LM head that reads the input embedding's weight at call time.

    Sharding swaps the embedding's parameter object (sharded <-> gathered), so a head tied by sharing that object
    would keep the stale, unsharded original; this one always uses the embedding's current weight."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self.embedding = [embedding]  # a list: not a submodule, so the weight is neither registered nor saved twice
        self.bias = None

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding[0].weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight)


def shard_decoder(model: torch.nn.Module, mesh: DeviceMesh, reshard_after_forward: bool = True,
                  mp_policy: Optional[MixedPrecisionPolicy] = None) -> torch.nn.Module:
    """Shard a (PEFT-wrapped) causal LM in place: every decoder layer a unit, the decoder the root unit.

    The decoder is called on its own (the LM head only at labelled positions), so it must be the root: FSDP2 keeps
    the root's gathered weights (embeddings, final norm) until backward, which lets a tied LM head read them.
    Returns the model.
    """
    if is_prompt_learning(model) or hasattr(model, "bottleneck_size"):
        raise ValueError("FSDP cannot shard prefix tuning or bottleneck adapters; use LoRA, DoRA, IA3 or full "
                         "fine-tuning")
    base = unwrap_peft(model)
    decoder = base.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"FSDP: {type(decoder).__name__} has no `layers` list to shard")
    tied = base.get_output_embeddings() is not None and \
        base.get_output_embeddings().weight is decoder.get_input_embeddings().weight
    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(decoder, **kwargs)
    if tied:
        base.set_output_embeddings(TiedHead(decoder.get_input_embeddings()))
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in model.modules())


def all_reduce_replicated(params: Iterable[torch.nn.Parameter]) -> None:
    """Average over processes the gradients of parameters that FSDP does not own (DDP's rule), in place."""
    grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    if not grads or not dist.is_initialized():
        return
    world = dist.get_world_size()
    for g in grads:
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        g.div_(world)


def clip_sharded_grads(params: Iterable[torch.nn.Parameter], max_norm: Optional[float]) -> torch.Tensor:
    """Global gradient norm over sharded (DTensor) and replicated gradients; if ``max_norm``, scale them all by
    ``min(1, max_norm / (norm + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``'s rule). Returns the norm before.

    Each shard's squared norm is summed over processes; a replicated gradient (already averaged, so equal on every
    process) counts once.
    """
    params = [p for p in params if p.grad is not None]
    device = params[0].grad.device if params else torch.device("cpu")
    sharded = torch.zeros((), device=device, dtype=torch.float32)
    whole = torch.zeros((), device=device, dtype=torch.float32)
    for p in params:
        if isinstance(p.grad, DTensor):
            sharded += p.grad.to_local().detach().float().pow(2).sum()
        else:
            whole += p.grad.detach().float().pow(2).sum()
    if dist.is_initialized():
        dist.all_reduce(sharded, op=dist.ReduceOp.SUM)
    norm = (sharded + whole).sqrt()
    if max_norm and math.isfinite(float(norm)):
        coef = min(1.0, max_norm / (float(norm) + 1e-6))
        if coef < 1.0:
            with torch.no_grad():
                for p in params:
                    (p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad).mul_(coef)
    return norm


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict, gathered to CPU on rank 0 (empty elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
