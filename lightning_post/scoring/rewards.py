"""Rewards for RL: a reward model export (sequence classification), a Python function named in YAML, or a weighted
list of both (registered built-ins and functions of your own).

A reward function is called once per rollout with keyword arguments and returns one float per reply::

    def my_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kwargs) -> list[float]

``prompts`` are the requests as text (the last user turn), ``completions`` the decoded replies, ``completion_ids``
their token ids (without padding; EOS included when the reply ended). Name it in YAML as
``reward_fn: my_package.my_module:my_reward`` with extra keyword arguments in ``reward_fn_kwargs``.

A list of them, ``reward_funcs`` (:class:`RewardFunc` entries: a name from :data:`REWARD_FUNCTIONS`, ``reward_model``
or ``package.module:function``, a weight and keyword arguments), scores with the weighted sum
(:class:`WeightedRewards`); its functions are also given ``records``, the prompt records, whose ``answer`` is the
reference answer (``exact_answer`` reads it), and each one's scores are logged on their own.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from lightning_post.errors import ConfigError, UserError
from lightning_post.models.loading import resolve_model_path, torch_dtype
from lightning_post.records.prompts import ANSWER_FIELD
from lightning_post.records.tokenize import reply_ids


def load_function(spec: str, setting: str = "reward_fn") -> Callable:
    """``package.module:function`` -> the function, with a clear error (naming ``setting``) when either part is
    missing."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{setting} must look like 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{setting} {spec!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{setting} {spec!r}: {module_name} has no function {name!r}")
    return fn


# ---- rule-based rewards -------------------------------------------------------------------------------------------
def token_fraction(completion_ids: list[list[int]], token_ids: Optional[Sequence[int]] = None,
                   below: Optional[int] = None, **_) -> list[float]:
    """Share of each reply's tokens that are in ``token_ids`` (or have an id below ``below``); 0 for an empty reply.

    >>> token_fraction([[1, 2, 3, 4], []], token_ids=[2, 4])
    [0.5, 0.0]
    """
    if (token_ids is None) == (below is None):
        raise ValueError("token_fraction needs exactly one of token_ids or below")
    wanted = set(token_ids or ())
    hit = (lambda t: t < below) if below is not None else (lambda t: t in wanted)
    return [sum(map(hit, ids)) / len(ids) if ids else 0.0 for ids in completion_ids]


def keyword_reward(completions: list[str], keywords: Sequence[str], **_) -> list[float]:
    """1 for each reply that contains any of ``keywords`` (case-insensitive), else 0.

    >>> keyword_reward(["Sorry, I can't.", "Sure!"], keywords=["sorry"])
    [1.0, 0.0]
    """
    lowered = [k.lower() for k in keywords]
    return [float(any(k in c.lower() for k in lowered)) for c in completions]


#: where a reply states its final answer: the text after the last of these is read first
ANSWER_MARKER = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)|정답\s*(?:은|는|:)|답\s*(?:은|는|:)|####", re.I)
#: a number as replies write it: an optional minus (not a hyphen between digits), thousands commas, decimals
NUMBER = re.compile(r"(?<![\d.])-?\d+(?:,\d{3})*(?:\.\d+)?")
#: markup and quotes dropped before short answers are compared; Korean copulas dropped from their end
_MARKUP = re.compile(r"[*_`\"'“”‘’]")
_COPULA = re.compile(r"(?:입니다|이에요|예요|이다|요)$")


def _number(text: str) -> Optional[float]:
    """``text`` as a number when it is one (``"1,000"`` -> 1000.0), else ``None``."""
    return float(text.replace(",", "")) if NUMBER.fullmatch(text.strip()) else None


def _short(text: str) -> str:
    """A short answer as compared: markup and quotes dropped, lower case, without surrounding punctuation, a
    leading article or a trailing Korean copula."""
    text = _MARKUP.sub("", text).lower().strip().strip(".,!?;:。 ")
    text = re.sub(r"^(?:the|a|an)\s+", "", text)
    return _COPULA.sub("", text).strip()


def final_answer(completion: str) -> str:
    """The part of a reply that states its answer: the text after the last answer marker (``The answer is``,
    ``Answer:``, ``정답은``, ``####``), else the whole reply.

    >>> final_answer("17 + 25 = 42. The answer is 42.")
    ' 42.'
    """
    markers = list(ANSWER_MARKER.finditer(completion))
    return completion[markers[-1].end():] if markers else completion


def exact_answer(completions: list[str], records: list[dict], **_) -> list[float]:
    """1 for each reply whose answer equals its record's reference ``answer``, else 0.

    A numeric reference is compared as a number with the first number after the reply's last answer marker, or
    without a marker its last number: ``42``, ``42.0``, ``**42**``, ``The answer is 42.``, ``42 apples`` and
    ``정답은 42입니다`` all match ``"42"``. A text reference is compared with the stated answer (or the whole reply),
    both without markup, case, surrounding punctuation, a leading article or a Korean copula: ``**Paris.**`` and
    ``The answer is paris`` match ``"Paris"``, ``정답은 서울입니다.`` matches ``"서울"``. A record without ``answer``
    raises ``ValueError``.

    >>> exact_answer(["The answer is 42.", "41", "정답은 서울입니다."], [{"answer": "42"}] * 2 + [{"answer": "서울"}])
    [1.0, 0.0, 1.0]
    """
    out = []
    for i, (reply, record) in enumerate(zip(completions, records)):
        if ANSWER_FIELD not in record:
            raise ValueError(f"the prompt record of reply {i} has no {ANSWER_FIELD!r} field (the reference answer)")
        reference, stated = str(record[ANSWER_FIELD]), final_answer(reply)
        want = _number(reference)
        if want is not None:
            after = NUMBER.findall(stated) if ANSWER_MARKER.search(reply) else []
            numbers = after[:1] or NUMBER.findall(reply)[-1:]
            got = _number(numbers[0]) if numbers else None
            out.append(float(got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)))
        else:
            first = re.split(r"[\n.!?。]", stated.strip(), maxsplit=1)[0]
            out.append(float(_short(reference) in (_short(first), _short(reply))))
    return out


def format_reward(completions: list[str], pattern: str, **_) -> list[float]:
    r"""1 for each reply in which the regular expression ``pattern`` matches (``re.search``; ``.`` also matches a
    newline), else 0.

    >>> format_reward(["The answer is 42.", "42"], pattern=r"^.*The answer is -?\d+")
    [1.0, 0.0]
    """
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.search(c) is not None) for c in completions]


def length_penalty(completion_ids: list[list[int]], max_length: int, buffer: int = 0, **_) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), over reply tokens (EOS included): 0 up to
    ``max_length - buffer`` tokens, then falling linearly to -1 at ``max_length``, and -1 beyond.

    >>> length_penalty([[7] * 4, [7] * 6, [7] * 8, [7] * 9], max_length=8, buffer=4)
    [0.0, -0.5, -1.0, -1.0]
    """
    if max_length < 1 or not 0 <= buffer <= max_length:
        raise ValueError(f"length_penalty needs max_length >= 1 and 0 <= buffer <= max_length, got {max_length}, "
                         f"{buffer}")
    free = max_length - buffer
    return [0.0 if len(ids) <= free else -1.0 if len(ids) >= max_length else (free - len(ids)) / buffer
            for ids in completion_ids]


#: reward functions by name, for ``reward_funcs`` entries (``reward_model`` is the reward-model entry, not here)
REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "exact_answer": exact_answer, "format": format_reward, "length_penalty": length_penalty,
    "token_fraction": token_fraction, "keyword": keyword_reward,
}
#: the ``reward_funcs`` name that scores with a reward model (``kwargs``: ``path``, optional ``template``)
REWARD_MODEL = "reward_model"


# ---- reward models ------------------------------------------------------------------------------------------------
class RewardModelScorer:
    """A sequence-classification reward model (e.g. a RewardModule export) that scores ``(prompt, reply)`` texts
    formatted exactly as its preference training data was (``template``), read at the last non-padding token."""

    def __init__(self, path: str, template: str = "chat", dtype: str = "float32", batch_size: int = 8,
                 trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        from lightning_post.models.loading import load_tokenizer

        try:
            self.tokenizer = load_tokenizer(path, trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(path), dtype=torch_dtype(dtype), num_labels=1, trust_remote_code=trust_remote_code,
            ).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"reward_model {path!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0]}). Train one "
                "with: lightning-post fit --config configs/reward/default.yaml --export.dirpath exports/reward"
            ) from None
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.template, self.batch_size = template, batch_size

    @torch.no_grad()
    def score(self, records: list[dict], replies: list[str], device: torch.device,
              progress: bool = False) -> torch.Tensor:
        """Scores ``(N,)`` of replies to normalised prompt records (``{"prompt", "raw_prompt"}``), batched by length
        (less padding), with a progress bar when ``progress``."""
        from tqdm.auto import tqdm

        self.model.to(device)
        rows = [reply_ids(r["prompt"], r["raw_prompt"], reply, self.template, self.tokenizer)
                for r, reply in zip(records, replies)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad = self.model.config.pad_token_id
        out = torch.empty(len(rows))
        for start in tqdm(range(0, len(rows), self.batch_size), desc="reward model", leave=False,
                          disable=not progress or len(rows) <= self.batch_size):
            idx = order[start: start + self.batch_size]
            chunk = [rows[i] for i in idx]
            width = max(map(len, chunk))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
            out[idx] = self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu()
        return out.to(device)


# ---- a weighted list of reward functions --------------------------------------------------------------------------
class RewardError(UserError):
    """A reward function that failed or returned the wrong number of scores: the run stops, naming it."""


@dataclasses.dataclass
class RewardFunc:
    """One entry of ``reward_funcs``; the reward of a reply is the weighted sum over the list."""

    name: str
    """A registered reward (``exact_answer``, ``format``, ``length_penalty``, ``token_fraction``, ``keyword``),
    ``reward_model``, or a function ``package.module:function``."""
    weight: float = 1.0
    """Its weight in the total reward."""
    kwargs: Optional[dict] = None
    """Keyword arguments of the function (``format``: ``pattern``; ``length_penalty``: ``max_length``, ``buffer``;
    ``reward_model``: ``path``, ``template``)."""
    label: Optional[str] = None
    """The name its mean is logged under (``train/rewards/<label>``); ``null`` = ``name`` (a function path: the
    function's name)."""


class RewardScores(NamedTuple):
    """Scores of ``N`` replies by a :class:`WeightedRewards` list."""

    total: torch.Tensor  # (N,) the weighted sum
    parts: dict[str, torch.Tensor]  # label -> (N,) that function's scores, unweighted


#: what every reward function of the list is given; its ``kwargs`` come on top
CALL_ARGUMENTS = ("prompts", "completions", "completion_ids", "records")


class WeightedRewards:
    """``reward_funcs``: every function scores every reply; the reward is ``sum_i weight_i * score_i``.

    Names, labels and required keyword arguments are checked at construction (``ConfigError`` naming the entry);
    reward models load in :meth:`load_models`. A function that raises, or does not return one number per reply,
    stops the run with :class:`RewardError` naming it.
    """

    def __init__(self, entries: Sequence, setting: str = "model.reward_funcs"):
        self.entries = [RewardFunc(**e) if isinstance(e, dict) else e for e in entries]
        if not self.entries:
            raise ConfigError(setting, "must name at least one reward function")
        self.functions: list[Optional[Callable]] = []
        self.labels: list[str] = []
        for i, entry in enumerate(self.entries):
            where = f"{setting}[{i}]"
            self.functions.append(self._resolve(entry, where))
            label = entry.label or entry.name.rpartition(":")[2]
            if label in self.labels or label == "total":
                raise ConfigError(f"{where}.label", f"{label!r} is logged twice or is reserved ('total'): give each "
                                                    "entry its own label")
            self.labels.append(label)
        self.scorers: dict[int, RewardModelScorer] = {}

    @staticmethod
    def _resolve(entry: RewardFunc, where: str) -> Optional[Callable]:
        """The entry's function (``None`` for a reward model), its required keyword arguments checked."""
        kwargs = entry.kwargs or {}
        if entry.name == REWARD_MODEL:
            if not isinstance(kwargs.get("path"), str) or set(kwargs) - {"path", "template"}:
                raise ConfigError(f"{where}.kwargs", "a reward_model entry takes path (a reward model folder) and "
                                                     f"optionally template, got {kwargs}")
            return None
        if entry.name in REWARD_FUNCTIONS:
            fn = REWARD_FUNCTIONS[entry.name]
        elif ":" in entry.name:
            try:
                fn = load_function(entry.name, f"{where}.name")
            except ValueError as e:
                raise ConfigError(f"{where}.name", str(e).removeprefix(f"{where}.name ")) from None
        else:
            raise ConfigError(f"{where}.name", f"{entry.name!r} is not a registered reward "
                                               f"({', '.join([*REWARD_FUNCTIONS, REWARD_MODEL])}) or a "
                                               "'package.module:function'")
        params = inspect.signature(fn).parameters.values()
        missing = [p.name for p in params if p.default is p.empty and p.name not in (*CALL_ARGUMENTS, *kwargs)
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if missing:
            raise ConfigError(f"{where}.kwargs", f"{entry.name} needs {', '.join(missing)}")
        return fn

    def load_models(self, dtype: str = "float32", batch_size: int = 8, trust_remote_code: bool = False) -> None:
        """Load the reward models of ``reward_model`` entries (once)."""
        for i, (entry, fn) in enumerate(zip(self.entries, self.functions)):
            if fn is None and i not in self.scorers:
                kwargs = entry.kwargs or {}
                self.scorers[i] = RewardModelScorer(kwargs["path"], kwargs.get("template", "chat"), dtype, batch_size,
                                                    trust_remote_code)

    def __call__(self, records: list[dict], completions: list[str], completion_ids: list[list[int]],
                 device: torch.device) -> RewardScores:
        """Each function's scores of the replies and their weighted sum, float32 on ``device``."""
        prompts = [r["prompt"][-1]["content"] for r in records]
        n, parts = len(completions), {}
        for i, (entry, fn, label) in enumerate(zip(self.entries, self.functions, self.labels)):
            try:
                if fn is None:
                    values = self.scorers[i].score(records, completions, device)
                else:
                    values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                records=records, **(entry.kwargs or {}))
                values = torch.as_tensor(values, dtype=torch.float32, device=device)
            except Exception as e:
                problem = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise RewardError(f"reward function {label!r} raised {type(e).__name__}"
                                  + (f": {problem}" if problem else "")) from e
            if values.dim() != 1 or len(values) != n:
                count = values.numel() if values.dim() <= 1 else f"an array of shape {tuple(values.shape)} of"
                raise RewardError(f"reward function {label!r} returned {count} values for {n} replies")
            parts[label] = values
        total = sum(e.weight * parts[label] for e, label in zip(self.entries, self.labels))
        return RewardScores(total, parts)
