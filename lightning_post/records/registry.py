"""The registry of record normalisers: data kind -> ``normalize(record, where) -> normalised record``.

A normaliser takes one raw record (a decoded JSON object, a parquet or ``datasets`` row) and the place it came from
(``file:line`` or ``file row i``), and returns the record in its kind's normalised shape or raises
:class:`~lightning_post.records.files.DataError` naming ``where`` and the field. Each kind's module registers its
normaliser with :func:`normalizer`; :mod:`lightning_post.records` imports every kind's module, so
:data:`NORMALIZERS` is complete once ``lightning_post.records`` is imported.
"""

from __future__ import annotations

from typing import Any, Callable

Normalizer = Callable[[Any, str], Any]

#: kind -> normaliser (``instruction``, ``preference``, ``scoring``, ``prompt``, ``unpaired``, ``feedback``,
#: ``pair``, ``annotation``); docs/data_formats.md documents each kind's layouts with examples
NORMALIZERS: dict[str, Normalizer] = {}


def normalizer(kind: str) -> Callable[[Normalizer], Normalizer]:
    """Register the decorated function as the normaliser of ``kind`` (a kind has exactly one)."""

    def register(fn: Normalizer) -> Normalizer:
        if kind in NORMALIZERS and NORMALIZERS[kind] is not fn:
            raise ValueError(f"data kind {kind!r} already has a normaliser: {NORMALIZERS[kind].__qualname__}")
        NORMALIZERS[kind] = fn
        return fn

    return register
