"""The training input pipeline: `TokenBatchSampler` batches collated by DataLoader workers, epoch after epoch,
resumable mid-epoch.

Workers collate ahead of the loop, so the sampler hands out indices before the loop uses their batches; the
resume position is therefore the loop's count of batches *consumed* (`state_dict`), not the sampler's own.
Batches come out of the pinned-memory thread in page-locked memory when ``pin_memory`` is set, so the copy to
the GPU (``.to(device, non_blocking=True)``) overlaps the step instead of stalling it.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader

from .batching import TokenBatchSampler, collate


class EpochBatches:
    """Iterator of ``(epoch, batch)`` forever; epochs count from 1 as the sampler's do.

    ``num_workers=0`` collates in the calling process, batch for batch what ``collate([ds[i] for i in idx])``
    gives. The DataLoader draws its workers' base seed from its own generator, never from the global torch
    RNG, so the model's dropout stream is the same with or without this pipeline.
    """

    def __init__(self, dataset, sampler: TokenBatchSampler, *, pad_id: int, bos_id: int, eos_id: int,
                 num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 4):
        self.sampler = sampler
        workers = int(num_workers)
        self.loader = DataLoader(
            dataset, batch_sampler=sampler, num_workers=workers, pin_memory=bool(pin_memory),
            collate_fn=functools.partial(collate, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id),
            generator=torch.Generator().manual_seed(sampler.seed),
            prefetch_factor=int(prefetch_factor) if workers > 0 else None,
            persistent_workers=workers > 0,  # no re-fork of the workers at every epoch
        )
        self.epoch = int(sampler.state_dict()["epoch"])
        self._consumed = int(sampler.state_dict()["position"])
        self._it = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._it is None:
                if self._consumed >= len(self.sampler):  # resumed right after an epoch's last batch
                    self.epoch += 1
                    self._consumed = 0
                self.sampler.set_epoch(self.epoch)
                # the sampler continues from its position (0 for a new epoch, the saved one on resume)
                self.sampler.load_state_dict(self.sampler.state_dict(position=self._consumed))
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self._consumed = 0
                continue
            self._consumed += 1
            return self.epoch, batch

    def state_dict(self) -> dict:
        """The sampler's state at the last batch handed to the loop (not the workers' read-ahead)."""
        return self.sampler.state_dict(position=self._consumed) | {"epoch": self.epoch}
