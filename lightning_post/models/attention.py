"""Padding-free training: run the model on the real tokens of a batch only, each sequence attending to itself.

A right-padded batch ``(B, T)`` spends compute on every pad position, in every layer. :func:`unpad` takes the
batch's real tokens into one row ``(1, N)`` (``N`` = real tokens), with the boundaries of its sequences as
cumulative lengths ``cu_seqlens = [0, n_1, n_1 + n_2, ..., N]``; :func:`repad` puts the hidden states back in the
batch's layout, so the losses downstream do not change. The linear layers then see ``N`` rows instead of ``B * T``.

Attention must keep the sequences apart. ``flash_attention_2``/``3`` do it natively from ``cu_seq_lens_*`` (GPU).
``sdpa_varlen``, registered here with transformers, does it anywhere: one ``scaled_dot_product_attention`` call per
sequence with ``is_causal=True``, so no FLOP is spent on masked pairs (a block-diagonal mask over the whole row
would cost ``N^2``). Without ``cu_seq_lens_*`` (generation, scoring with a padding mask) it is plain ``sdpa``.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

#: attention implementations that take unpadded rows with ``cu_seq_lens_*``
VARLEN_ATTENTION = ("sdpa_varlen", "flash_attention_2", "flash_attention_3")
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                          scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """transformers attention function: per-sequence causal SDPA on an unpadded row.

    ``query (1, Hq, N, D)``, ``key``/``value (1, Hkv, N, D)``; returns ``(1, N, Hq, D)`` like transformers' sdpa.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    p = dropout if module.training else 0.0
    lengths = (cu[1:] - cu[:-1]).tolist()
    # On CUDA, leave out cuDNN's attention: it builds an execution plan for every new sequence length, and
    # padding-free batches bring new lengths every step.
    backends = _CUDA_BACKENDS if query.is_cuda else None
    with sdpa_kernel(backends) if backends else contextlib.nullcontext():
        # split, not slices: the backward of a slice writes a zero tensor of the whole row per sequence
        outs = [
            F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa)
            for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))
        ]  # each (1, Hq, n_i, D)
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None  # (1, N, Hq, D)


def register() -> None:
    """Make ``attn_implementation: sdpa_varlen`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register("sdpa_varlen", sdpa_varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa_varlen", sdpa_mask)


def unpad(batch: dict) -> dict:
    """The real tokens of a batch as one row, and where each sequence starts.

    A sequence is a run of tokens with the same row and ``segment_ids`` value (packed rows hold several). Returns
    ``input_ids``/``position_ids (1, N)``, ``keep (B, T)`` (the real positions) and ``cu_seqlens (S + 1,)`` on the
    CPU (the attention loop reads its bounds without a device sync).

    >>> b = {"input_ids": torch.tensor([[5, 6, 7], [8, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
    ...      "position_ids": torch.tensor([[0, 1, 0], [0, 0, 0]]), "segment_ids": torch.tensor([[1, 1, 2], [1, 0, 0]])}
    >>> u = unpad(b)
    >>> u["input_ids"].tolist(), u["position_ids"].tolist(), u["cu_seqlens"].tolist()
    ([[5, 6, 7, 8]], [[0, 1, 0, 0]], [0, 2, 3, 4])
    """
    keep = batch["attention_mask"].bool()  # (B, T)
    rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]  # (N,)
    segment = batch["segment_ids"][keep] if "segment_ids" in batch else torch.ones_like(rows)  # (N,)
    key = (rows * (int(segment.max()) + 1) + segment).cpu()  # (N,) one value per sequence
    starts = torch.cat([torch.tensor([True]), key[1:] != key[:-1]]).nonzero()[:, 0]  # (S,)
    cu = torch.cat([starts, torch.tensor([key.numel()])])  # (S + 1,)
    return {"input_ids": batch["input_ids"][keep][None], "position_ids": batch["position_ids"][keep][None],
            "keep": keep, "cu_seqlens": cu}


def varlen_kwargs(cu_seqlens: torch.Tensor, implementation: str, device: torch.device) -> dict:
    """The ``cu_seq_lens_*`` / ``max_length_*`` keyword arguments transformers passes to the attention function
    (flash attention reads them on the device as int32; ``sdpa_varlen`` reads them on the CPU)."""
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    cu = cu_seqlens if implementation == "sdpa_varlen" else cu_seqlens.to(device=device, dtype=torch.int32)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def repad(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Hidden states of the real tokens ``(1, N, H)`` back in the batch layout ``(B, T, H)`` (zeros at padding)."""
    out = hidden.new_zeros(*keep.shape, hidden.shape[-1])  # (B, T, H)
    out[keep] = hidden[0]
    return out
