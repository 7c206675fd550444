"""The randomness of a training step as a function of its place: (seed, rank, epoch, batch of the epoch).

Before each training step torch (every device), NumPy and Python are seeded from that place, so dropout,
the cycle-GAN's image pools and anything else drawing from the global generators draw the same in a run
resumed from a checkpoint as in the run that never stopped (the data and NormNet's lesions are fixed by
their place already: datamodules.positions, datamodules.healthy). The training loader (a
datamodules.positions.PositionLoader) is told how many batches of the epoch are trained once this step
is, which the checkpoints saved after the step then hold.
"""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def step_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class StepRandomness(L.Callback):
    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        seed = step_seed(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx)
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)
        loader = trainer.train_dataloader
        if hasattr(loader, "batches_trained"):     # counted now, before any callback saves after this step
            loader.batches_trained = batch_idx + 1
