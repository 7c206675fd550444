"""Training loaders whose every batch is fixed by its position: (seed, epoch, rank, batch in the epoch).

An epoch's order is torch's DistributedSampler's (the plain order, or a permutation seeded by seed +
epoch; every world-th item for each rank); being a DistributedSampler, Lightning keeps it as it is. The
loader tells Lightning's checkpoints how many batches of the epoch were trained (`state_dict`), and a run
resumed mid-epoch starts its first epoch right after them (`load_state_dict`), so a resumed run reads
exactly the batches the uninterrupted one would have read.
"""
from __future__ import annotations

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class PositionSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, batch_size: int, rank: int, world: int, seed: int, shuffle: bool,
                 drop_last: bool):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.batch_size, self.skip_batches = batch_size, 0

    def __iter__(self):
        """DistributedSampler's order of this rank's items for the epoch (seeded by seed + epoch), after the
        batches a resumed run trained already; only the first epoch after a resume is shortened."""
        skip, self.skip_batches = self.skip_batches, 0
        return iter(list(super().__iter__())[skip * self.batch_size:])


class PositionLoader(DataLoader):
    """A DataLoader over a PositionSampler that Lightning checkpoints as stateful: `batches_trained` is set
    by the run as each training batch starts (callbacks.step_randomness), so checkpoints saved after that
    step count it."""

    def __init__(self, dataset: Dataset, sampler: PositionSampler, **options):
        super().__init__(dataset, sampler=sampler, batch_size=sampler.batch_size, drop_last=sampler.drop_last,
                         **options)
        self.batches_trained = 0

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_trained": self.batches_trained}

    def load_state_dict(self, state: dict) -> None:
        """Called by Lightning when it resumes inside an epoch: the epoch starts after its trained batches."""
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.skip_batches = self.batches_trained = int(state["batches_trained"])


def training_epoch(trainer) -> int:
    """The epoch a training loader made now serves: the epochs Lightning has run to their end (as it counts
    them for samplers). A run resumed at an epoch's end makes its loader before it counts that epoch
    completed, so `trainer.current_epoch` would still name the finished one."""
    return trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0


def training_loader(dataset: Dataset, trainer, batch_size: int, seed: int, shuffle: bool, drop_last: bool,
                    num_workers: int = 0, **options) -> PositionLoader:
    """The training loader of a datamodule attached to `trainer` (rank, world and epoch from it; without one,
    rank 0 of 1 at epoch 0). The epoch is set here: Lightning sets it only after it has started iterating."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    sampler = PositionSampler(dataset, batch_size, rank, world, seed, shuffle, drop_last)
    sampler.set_epoch(training_epoch(trainer))
    return PositionLoader(dataset, sampler, num_workers=num_workers, persistent_workers=num_workers > 0, **options)
