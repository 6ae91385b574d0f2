"""Batched chat generation and answer-option probabilities with a causal LM, shared by Constitutional AI, judges,
evaluation and A/B tests. Probabilities of fixed options are read from the model's log-likelihoods, never by
searching generated text for a word."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

Messages = list[dict[str, str]]


@torch.no_grad()
def generate_from_ids(model: torch.nn.Module, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int,
                      **kwargs) -> list[str]:
    """Decoded completions of tokenised prompts, batched with left padding so every reply starts at the same column
    (KV cache on, even where gradient checkpointing turned it off for training); greedy unless ``do_sample``."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    kwargs.setdefault("do_sample", False)
    was_training = model.training
    model.eval()
    rows = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                          pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True, **kwargs)
    model.train(was_training)
    return [tokenizer.decode(r[width:], skip_special_tokens=True).strip() for r in rows]  # (b, width + new)


class ChatGenerator:
    """Batched generation and option scoring for chat prompts with ``model`` (a causal LM) and its tokenizer.

    ``temperature`` 0 answers greedily. Prompts longer than ``max_prompt_length`` tokens keep their last tokens.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 8, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, max_prompt_length: int = 1024, progress: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.temperature, self.top_p, self.max_prompt_length = temperature, top_p, max_prompt_length
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def context_text(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _batches(self, n: int, desc: str):
        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc=desc, disable=not self.progress or n <= self.batch_size, leave=False)

    @torch.no_grad()
    def generate(self, conversations: Sequence[Messages], desc: str = "generating",
                 temperature: Optional[float] = None) -> list[str]:
        """The model's next assistant turn for each conversation."""
        temperature = self.temperature if temperature is None else temperature
        sampling = {"do_sample": True, "temperature": temperature, "top_p": self.top_p, "top_k": 0} if temperature \
            else {"do_sample": False}
        out: list[str] = []
        for start in self._batches(len(conversations), desc):
            ids = [self.encode(self.context_text(c))[-self.max_prompt_length:]
                   for c in conversations[start: start + self.batch_size]]
            out += generate_from_ids(self.model, self.tokenizer, ids, self.max_new_tokens, **sampling)
        return out

    @torch.no_grad()
    def option_logprobs(self, conversations: Sequence[Messages], options: Sequence[str], prefix: str = "",
                        desc: str = "scoring options") -> torch.Tensor:
        """``(N, C)`` log-likelihood of the assistant reply ``prefix + option`` for every conversation and option:
        the summed log-probs of its tokens after the chat template's generation prompt."""
        rows, spans, last_only = [], [], []
        for conv in conversations:
            context = self.context_text(conv)
            base = self.encode(context)
            fulls = [self.encode(context + prefix + option) for option in options]
            if any(full[: len(base)] != base for full in fulls):
                raise ValueError("the chat template's generation prompt does not tokenise as a prefix of the reply")
            keep = max(0, max(map(len, fulls)) - self.max_prompt_length)  # drop the oldest tokens of long prompts
            if len({len(f) for f in fulls}) == 1 and len({tuple(f[:-1]) for f in fulls}) == 1:
                # the options differ only in their last token ("(A" / "(B", "Yes" / "No"): one forward serves all
                rows.append(fulls[0][keep:])
                spans.append(len(base) - keep)
                last_only.append([f[-1] for f in fulls])
                continue
            for full in fulls:
                rows.append(full[keep:])
                spans.append(len(base) - keep)
                last_only.append(None)
        out: list[Optional[torch.Tensor]] = [None] * len(rows)  # per row: (1,) whole reply, or (C,) options
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # batches of similar length: little padding
        was_training = self.model.training
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        for start in self._batches(len(rows), desc):
            idx = order[start: start + self.batch_size]
            chunk, first = [rows[i] for i in idx], [spans[i] for i in idx]
            width = max(map(len, chunk))
            # left padding: every row ends at the last column, so the logits of the replies are the last `keep`
            # columns and the LM head (a fifth of a small model's compute) runs on those alone
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk], device=self.device)  # (b, T)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=self.device)
            keep = max(len(r) - f for r, f in zip(chunk, first)) + 1  # reply tokens and the position before them
            logps = F.log_softmax(_last_logits(self.model, ids, mask, keep).float(), -1)  # (b, keep, V)
            token_logps = logps[:, :-1].gather(-1, ids[:, width - keep + 1:, None]).squeeze(-1)  # (b, keep-1)
            predicted = torch.arange(width - keep + 1, width, device=self.device)[None]  # (1, keep-1): columns
            offsets = torch.tensor([width - len(r) for r in chunk], device=self.device)[:, None]
            starts = torch.tensor(first, device=self.device)[:, None]
            in_reply = predicted - offsets >= starts  # (b, keep-1): the predicted token belongs to the reply
            shared = (token_logps * (in_reply & (predicted < width - 1))).sum(1)  # (b,): all but the last token
            for j, i in enumerate(idx):
                options_last = last_only[i]
                if options_last is None:  # one row per option: its whole reply
                    out[i] = (token_logps[j] * in_reply[j]).sum()[None].cpu()
                else:  # one row for every option: shared tokens plus each option's last token
                    out[i] = (shared[j] + logps[j, keep - 2, options_last]).cpu()
        self.model.train(was_training)
        return torch.cat(out).view(len(conversations), len(options))

    def option_probs(self, conversations: Sequence[Messages], options: Sequence[str], prefix: str = "",
                     desc: str = "scoring options") -> torch.Tensor:
        """``(N, C)`` probabilities of the options, normalised over the options."""
        return option_probs_from_logprobs(self.option_logprobs(conversations, options, prefix, desc))


def _last_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits ``(b, keep, V)`` of the last ``keep`` columns of left-padded rows, with position ids counted from each
    row's first real token (so padding changes nothing, whatever the position encoding)."""
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep: compute all, keep the last columns
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -keep:]


def option_probs_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Normalise option log-likelihoods ``(N, C)`` into a distribution over the C options.

    >>> option_probs_from_logprobs(torch.log(torch.tensor([[0.2, 0.6]])))
    tensor([[0.2500, 0.7500]])
    """
    return torch.softmax(logprobs, -1)


def pick_device(device: Optional[str]) -> str:
    """The device a command runs on: ``device`` when given, else cuda when available, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")
