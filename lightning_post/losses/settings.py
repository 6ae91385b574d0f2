"""The hyper-parameters of a registered loss, read once from its signature.

A registered loss takes its tensors first and then its settings by name, each with its default (or none, when it
must be given): ``def my_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, alpha=0.3)``. The
signature is the whole list: a loss has no ``**kwargs``, so a caller passes it exactly the settings it declares and
a misspelled one cannot be swallowed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

#: the default of a setting that has none (the caller must give it)
REQUIRED = inspect.Parameter.empty


@functools.cache
def _declared(fn: Callable, inputs: int) -> tuple[tuple[str, object], ...]:
    params = list(inspect.signature(fn).parameters.values())
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            stars = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise TypeError(f"loss {fn.__name__} takes {stars}{p.name}: a registered loss names each of its settings")
    return tuple((p.name, p.default) for p in params[inputs:])


def loss_settings(fn: Callable, inputs: int) -> dict[str, object]:
    """``setting -> default`` (:data:`REQUIRED` where none) of the loss ``fn``: its arguments after the first
    ``inputs`` tensors.

    >>> def my_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, alpha=0.3): ...
    >>> loss_settings(my_loss, 4)
    {'beta': 0.1, 'alpha': 0.3}
    """
    return dict(_declared(fn, inputs))


def pick_settings(fn: Callable, inputs: int, settings: dict) -> dict:
    """The entries of ``settings`` that the loss ``fn`` declares (a mixture passes each loss its own)."""
    declared = _declared(fn, inputs)
    return {name: settings[name] for name, _ in declared if name in settings}
