"""A verifiable task: arithmetic questions with their answers, generated from a seed, as prompt records
(``{"prompt", "answer"}``) that :class:`~lightning_post.data.prompts.PromptDataModule` reads and the ``exact_answer``
reward checks (:mod:`lightning_post.scoring.rewards`).

Every problem ``a op b`` belongs to exactly one split by a fixed rule of the problem itself (a hash of its text), so
a held-out set never shares a problem with a training set, whatever the seeds or sizes of either, and in either
language: a gain on the held-out split is a gain on questions the policy never trained on.

    >>> arithmetic_records(1, seed=0)
    [{'prompt': 'What is 78 + 89? Answer with the number.', 'answer': '167'}]
"""

from __future__ import annotations

import hashlib
import random

#: the splits, and the share of all problems that is held out
SPLITS = ("train", "heldout")
HELDOUT_SHARE = 5  # one problem in 5 (by its hash) is held out
#: question templates by language (``{a} {op} {b}``)
QUESTIONS = {
    "en": "What is {a} {op} {b}? Answer with the number.",
    "ko": "{a} {op} {b}의 값은 얼마입니까? 숫자로 답하세요.",
}
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def problem_split(a: int, op: str, b: int) -> str:
    """The split a problem belongs to, fixed by the problem alone: ``heldout`` when the first byte of the SHA-256 of
    ``"a op b"`` is divisible by 5 (about a fifth of all problems), else ``train``.

    >>> problem_split(78, "+", 89), problem_split(2, "+", 0)
    ('train', 'heldout')
    """
    digest = hashlib.sha256(f"{a} {op} {b}".encode()).digest()
    return "heldout" if digest[0] % HELDOUT_SHARE == 0 else "train"


def arithmetic_records(n: int, seed: int = 0, split: str = "train", language: str = "en", operations: str = "+-",
                       max_operand: int = 99) -> list[dict]:
    """``n`` distinct problems of ``split`` as ``{"prompt", "answer"}`` records, drawn by ``random.Random(seed)``.

    Operands are integers in ``[0, max_operand]``; a subtraction has ``a >= b`` (no negative answers); ``language``
    is ``en``, ``ko`` or ``both`` (each problem's language drawn too). Raises ``ValueError`` for an unknown split,
    language or operation, or when the split has fewer than ``n`` problems.

    >>> arithmetic_records(1, seed=0, language="ko")
    [{'prompt': '78 + 89의 값은 얼마입니까? 숫자로 답하세요.', 'answer': '167'}]
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if language not in (*QUESTIONS, "both"):
        raise ValueError(f"language must be one of {[*QUESTIONS, 'both']}, got {language!r}")
    unknown = sorted(set(operations) - set(OPERATIONS))
    if not operations or unknown:
        raise ValueError(f"operations must be a string of {''.join(OPERATIONS)}, got {operations!r}")
    if n < 0 or max_operand < 1:
        raise ValueError(f"need n >= 0 and max_operand >= 1, got n={n}, max_operand={max_operand}")
    ops = sorted(set(operations), key=operations.index)
    # the problems of the split, in a fixed order, then a seeded sample of them (no repeats by construction)
    pool = [(a, op, b) for op in ops for a in range(max_operand + 1) for b in range(max_operand + 1)
            if (op != "-" or a >= b) and problem_split(a, op, b) == split]
    if n > len(pool):
        raise ValueError(f"the {split} split has {len(pool)} problems with operations {operations!r} and "
                         f"max_operand {max_operand}; asked for {n}")
    rng = random.Random(seed)
    out = []
    for a, op, b in rng.sample(pool, n):
        lang = rng.choice(sorted(QUESTIONS)) if language == "both" else language
        out.append({"prompt": QUESTIONS[lang].format(a=a, op=op, b=b), "answer": str(OPERATIONS[op](a, b))})
    return out
