"""Records: every data layout the package reads, as pure functions (a record in, a normalised record out), the
readers of users' files, the prompt templates and the tokenisation of records into token ids and labels.

Nothing here is a ``LightningDataModule`` or a torch module, and nothing imports more of the package than
:mod:`lightning_post.errors`: the data modules (:mod:`lightning_post.data`), the scorers and judges
(:mod:`lightning_post.scoring`) and the commands import these functions, never the reverse.

- :mod:`~lightning_post.records.files`: ``DataError(where, field, problem)``, reading JSON Lines / JSON / parquet /
  saved datasets (``raw_records``), writing JSON Lines, the bundled files;
- one module per data kind, each with its normaliser: :mod:`~lightning_post.records.instruction` (SFT),
  :mod:`~lightning_post.records.preference` (pairs, and records to score), :mod:`~lightning_post.records.prompts`
  (RL, CAI, the commands' prompts), :mod:`~lightning_post.records.unpaired` (KTO),
  :mod:`~lightning_post.records.feedback` (deployment feedback), :mod:`~lightning_post.records.annotations`
  (comparison pairs and their labels); :mod:`~lightning_post.records.chat` holds the message checks they share;
- :mod:`~lightning_post.records.arithmetic`: a verifiable task, seeded arithmetic prompts with their answers (train
  and held-out problems that never overlap);
- :mod:`~lightning_post.records.templates` (``PROMPT_LAYOUTS``) and :mod:`~lightning_post.records.tokenize`
  (segments, pairs and prompts to token ids and labels, truncation).

**A new data format is one function plus its test.** A new layout of an existing kind is a branch of that kind's
normaliser that returns the same normalised shape, so nothing downstream changes. A new kind is one function
``normalize_<kind>(record, where) -> dict`` that raises ``DataError(where, field, problem)`` for a bad record,
registered with ``@normalizer("<kind>")`` (:data:`NORMALIZERS`); ``raw_records(path, normalize_<kind>)`` then reads
every file format with exact locations. Its test is an example block ```` ```json <kind> ```` in
docs/data_formats.md: ``tests/test_data_formats.py`` runs every registered normaliser on its examples and fails for
a registered kind the page does not show.
"""

from lightning_post.records import annotations, feedback, instruction, preference, prompts, unpaired  # noqa: F401
from lightning_post.records.registry import NORMALIZERS, normalizer

__all__ = ["NORMALIZERS", "normalizer"]
