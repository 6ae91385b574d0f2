"""Parameter-efficient fine-tuning: the ``peft:`` block of a module's YAML.

No block means full fine-tuning. A block selects a registered method and its settings: ``lora``, ``dora``
(weight-decomposed LoRA), ``ia3``, ``prefix`` (prefix tuning) through PEFT; ``bottleneck`` (Houlsby-style adapters
after each decoder block's MLP, written here: no maintained library supports them on transformers 5); ``qlora``
(LoRA on a 4-bit base through bitsandbytes; CUDA only)::

    model:
      peft:
        method: lora
        r: 16
        alpha: 32
        dropout: 0.05
        target_modules: all-linear
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Union

import torch

from lightning_post.models.bottleneck import (  # noqa: F401  (also importable from here)
    BOTTLENECK_CONFIG, BottleneckAdapter, add_bottleneck_adapters, save_bottleneck,
)


@dataclass
class PeftSettings:
    """Settings of a parameter-efficient method applied to the policy model."""

    method: str = "lora"
    """Registered method name (see ``PEFT_METHODS``)."""
    r: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is scaled by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: Union[str, list[str]] = "all-linear"
    """Module names to adapt (``q_proj``, ``v_proj``, ...) or ``all-linear`` (every linear layer but the LM head)."""
    bias: str = "none"
    """Which biases train: ``none``, ``all`` or ``lora_only``."""
    num_virtual_tokens: int = 16
    """Prefix tuning: learned key/value positions per layer."""
    bottleneck_size: int = 64
    """Bottleneck adapter: width of the down-projection."""
    fused: bool = True
    """LoRA: add the adapter's product to the base layer's output inside one ``addmm`` (same maths, two fewer
    passes over each layer's output; see ``fuse_lora_forward``)."""
    extra: dict = field(default_factory=dict)
    """Further keyword arguments passed to the PEFT config class unchanged."""


def _lora(model: torch.nn.Module, s: PeftSettings, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=s.target_modules,
        bias=s.bias,
        task_type=task_type,
        **s.extra,
    )
    model = get_peft_model(model, config)
    if s.fused and not config.use_dora:
        fuse_lora_forward(model)
    return model


def fuse_lora_forward(model: torch.nn.Module) -> int:
    """Give every plain LoRA linear layer the fused forward ``addmm(x W^T + b, dropout(x) A^T, B^T, alpha=s)``.

    PEFT computes ``base(x) + B(A(dropout(x))) * s``: the scaling and the sum are two more passes over the layer's
    output, forward and backward. The fused forward is the same sum in one BLAS call. Layers with adapters
    disabled (DPO's reference), merged, with several active adapters, a variant (DoRA) or LoRA biases (``lora_bias``)
    keep PEFT's forward.
    Returns the number of layers changed.
    """
    import types

    from peft.tuners.lora.layer import Linear as LoraLinear

    n = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear:
            module.forward = types.MethodType(_fused_lora_forward, module)
            n += 1
    return n


def _fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    if self.disable_adapters or self.merged or args or kwargs or len(adapters) != 1 or adapters[0] in self.lora_variant \
            or self.lora_A[adapters[0]].bias is not None or self.lora_B[adapters[0]].bias is not None:  # lora_bias
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    A, B = self.lora_A[name].weight, self.lora_B[name].weight  # (r, in), (out, r)
    out = torch.nn.functional.linear(x, self.base_layer.weight, self.base_layer.bias)  # (..., out)
    low = torch.nn.functional.linear(self.lora_dropout[name](x), A)  # (..., r)
    fused = torch.addmm(out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]), B.t(), alpha=self.scaling[name])
    return fused.view(out.shape)


def _dora(model: torch.nn.Module, s: PeftSettings, task_type: str = "CAUSAL_LM"):
    return _lora(model, dataclasses.replace(s, extra={**s.extra, "use_dora": True}), task_type)


def _ia3(model: torch.nn.Module, s: PeftSettings, task_type: str = "CAUSAL_LM"):
    """IA3 scales keys, values and the MLP's input to its down-projection; ``all-linear`` means PEFT's default
    modules for the architecture."""
    from peft import IA3Config, get_peft_model

    targets = None if s.target_modules == "all-linear" else s.target_modules
    feedforward = None if targets is None else [m for m in targets if m in FEEDFORWARD_MODULES]
    return get_peft_model(model, IA3Config(target_modules=targets, feedforward_modules=feedforward,
                                           task_type=task_type, **s.extra))


def _prefix(model: torch.nn.Module, s: PeftSettings, task_type: str = "CAUSAL_LM"):
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=s.num_virtual_tokens, task_type=task_type,
                                                    **s.extra))


def _bottleneck(model: torch.nn.Module, s: PeftSettings, task_type: str = "CAUSAL_LM"):
    if task_type != "CAUSAL_LM":
        raise ValueError("peft.method=bottleneck adapts causal LMs (SFT, DPO, KTO, PPO, CAI); for a reward model "
                         "use lora, dora, ia3 or prefix")
    return add_bottleneck_adapters(model, s.bottleneck_size)


def _qlora(model: torch.nn.Module, s: PeftSettings, task_type: str = "CAUSAL_LM"):
    """LoRA on the 4-bit base that :func:`quantization_config` made the loader produce."""
    from peft import prepare_model_for_kbit_training

    check_qlora()
    return _lora(prepare_model_for_kbit_training(model), s, task_type)


def check_qlora() -> None:
    """QLoRA needs CUDA and bitsandbytes; say so plainly instead of failing inside a kernel."""
    if not torch.cuda.is_available():
        raise ValueError("peft.method=qlora needs a CUDA GPU (bitsandbytes 4-bit weights); this machine has none. "
                         "Use method: lora (or dora) on CPU.")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("peft.method=qlora needs bitsandbytes: pip install bitsandbytes")


def quantization_config(settings: "PeftSettings | None"):
    """The loader's 4-bit NF4 settings for QLoRA (compute in bfloat16, double quantisation), else ``None``."""
    if settings is None or settings.method != "qlora":
        return None
    check_qlora()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


#: module names that are feed-forward inputs (IA3 scales their input rather than their output)
FEEDFORWARD_MODULES = ("down_proj", "fc2", "c_proj", "dense_4h_to_h")

#: method name -> function(model, settings) returning the wrapped model.
PEFT_METHODS: dict[str, Callable] = {"lora": _lora, "dora": _dora, "ia3": _ia3, "prefix": _prefix,
                                     "bottleneck": _bottleneck, "qlora": _qlora}


def check_peft_settings(s: "PeftSettings | None", prefix: str = "model.peft") -> None:
    """Refuse settings that cannot train, naming the setting (called by the module's constructor, before any run)."""
    from lightning_post.errors import ConfigError

    if s is None:
        return
    if s.method not in PEFT_METHODS:
        raise ConfigError(f"{prefix}.method", f"unknown method {s.method!r}; choose one of {sorted(PEFT_METHODS)}")
    if s.method in ("lora", "dora", "qlora"):
        if s.r < 1:
            raise ConfigError(f"{prefix}.r", f"the LoRA rank must be >= 1, got {s.r}")
        if s.alpha <= 0:
            raise ConfigError(f"{prefix}.alpha", f"must be > 0, got {s.alpha}")
        if s.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"{prefix}.bias", f"must be 'none', 'all' or 'lora_only', got {s.bias!r}")
    if not 0 <= s.dropout < 1:
        raise ConfigError(f"{prefix}.dropout", f"must be in [0, 1), got {s.dropout}")
    if s.method == "prefix" and s.num_virtual_tokens < 1:
        raise ConfigError(f"{prefix}.num_virtual_tokens", f"must be >= 1, got {s.num_virtual_tokens}")
    if s.method == "bottleneck" and s.bottleneck_size < 1:
        raise ConfigError(f"{prefix}.bottleneck_size", f"must be >= 1, got {s.bottleneck_size}")
    targets = s.target_modules
    if not targets or (isinstance(targets, list) and not all(isinstance(t, str) and t for t in targets)):
        raise ConfigError(f"{prefix}.target_modules", "must be 'all-linear' or a non-empty list of module names")


def check_target_modules(model: torch.nn.Module, s: "PeftSettings | None", prefix: str = "model.peft") -> None:
    """Refuse target module names that match no module of ``model`` (PEFT matches a name by its last parts: a
    module named ``model.layers.0.self_attn.q_proj`` matches ``q_proj`` and ``self_attn.q_proj``). ``model`` may
    live on the meta device: only names are read."""
    from lightning_post.errors import ConfigError

    if s is None or s.method in ("prefix", "bottleneck") or s.target_modules == "all-linear":
        return
    targets = [s.target_modules] if isinstance(s.target_modules, str) else list(s.target_modules)
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if n and isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"{prefix}.target_modules", f"no module named {', '.join(map(repr, missing))} in "
                                                       f"{type(model).__name__}; its linear layers: {', '.join(leaves)}")


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (adapters stay injected in its layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_prompt_learning(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a PEFT prompt-learning model (prefix tuning): its forward must go through PEFT."""
    config = getattr(model, "peft_config", None)
    return bool(config) and any(getattr(c, "is_prompt_learning", False) for c in config.values())


def can_merge(model: torch.nn.Module) -> bool:
    """Whether the adapters fold into the base weights (LoRA, DoRA, IA3: yes; prefix, bottleneck: no)."""
    return hasattr(model, "peft_config") and not is_prompt_learning(model)


@contextlib.contextmanager
def disable_adapters(model: torch.nn.Module):
    """The base model's behaviour inside the block: PEFT adapters disabled, or bottleneck adapters bypassed."""
    if not hasattr(model, "bottleneck_size"):
        with model.disable_adapter():
            yield
        return
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a in adapters:
            a.enabled = True


def apply_peft(model: torch.nn.Module, settings: PeftSettings | None, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with the configured PEFT method; ``None`` returns it unchanged (full fine-tuning).

    ``task_type`` is PEFT's: ``CAUSAL_LM``, or ``SEQ_CLS`` for reward models (PEFT then trains the new ``score``
    head in full beside the adapters)."""
    if settings is None:
        return model
    try:
        build = PEFT_METHODS[settings.method]
    except KeyError:
        raise ValueError(f"peft.method={settings.method!r} is unknown; choose one of {sorted(PEFT_METHODS)}") from None
    return build(model, settings, task_type)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts (tied weights counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
