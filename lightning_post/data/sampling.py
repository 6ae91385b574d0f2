"""A seeded, rank-aware sampler that a resumed run continues exactly where the interrupted one stopped."""

from __future__ import annotations

from typing import Iterator, Optional

from torch.utils.data import DataLoader, DistributedSampler


from lightning_post.errors import UserError

class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (so Lightning leaves it in place) whose first pass can skip already-trained batches.

    The order of epoch ``e`` is a permutation seeded by ``seed + e``; on one process it is the whole permutation, on
    ``W`` processes rank ``r`` takes every ``W``-th index, so a global batch is the same set of examples for any
    ``W`` that divides it.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.skip_batches = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip_batches = self.skip_batches * self.batch_size, 0  # skip applies to one pass only
        return iter(indices[skip:])


class ResumableLoader(DataLoader):
    """A DataLoader with the ``state_dict`` interface, so Lightning treats it as resumable.

    The position inside the epoch is not stored here: Lightning restores its own count of completed batches, and the
    data module turns that into :attr:`ResumableSampler.skip_batches`. The state holds the seed, so resuming with a
    different data order is refused instead of silently training on other examples.
    """

    def state_dict(self) -> dict:
        return {"seed": self.sampler.seed, "epoch": self.sampler.epoch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.sampler.seed:
            raise UserError(
                f"the checkpoint was trained with data.seed={state.get('seed')}, this run has {self.sampler.seed}"
            )
        self.sampler.set_epoch(state["epoch"])


def completed_batches_in_epoch(trainer: Optional[object], batches_per_epoch: int) -> int:
    """Batches of the current epoch that a restored checkpoint already trained on (0 when not resuming)."""
    loop = getattr(trainer, "fit_loop", None)
    if loop is None or not loop.restarting:
        return 0
    # `processed`, not `completed`: checkpoints written in on_train_batch_end (ModelCheckpoint's every_n_train_steps)
    # are saved before Lightning marks the batch completed, though its optimizer step is in the checkpoint
    done = loop.epoch_loop.batch_progress.current.processed
    return 0 if done >= batches_per_epoch else done


def resumable_train_loader(dataset, trainer, batch_size: int, shuffle: bool, seed: int, collate_fn, num_workers: int,
                           generator) -> ResumableLoader:
    """The training loader every data module uses: seeded, rank-aware, and resumable mid-epoch."""
    sampler = ResumableSampler(
        dataset,
        num_replicas=trainer.world_size if trainer else 1,
        rank=trainer.global_rank if trainer else 0,
        shuffle=shuffle,
        seed=seed,
        batch_size=batch_size,
    )
    loader = ResumableLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        generator=generator,
    )
    sampler.skip_batches = completed_batches_in_epoch(trainer, len(loader))
    return loader
