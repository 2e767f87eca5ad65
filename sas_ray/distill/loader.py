"""A training stage's batches in step order, built ahead of the step, in one of two places (`loader_processes`):

- `thread_batches` (0 processes): `prefetch` threads of the training process build each batch on the training
  device, their kernels on a stream of their own; nothing to start, but the threads share the training process's
  GIL and GPU with the step;
- `process_batches` (N processes): N spawned worker processes (a torch DataLoader) build each batch on the CPU and
  hand it over in shared memory, a thread of the training process pins it and the step copies it to the device:
  the step's process only launches kernels.
A batch is a function of its step alone (`training.load_batch`), so both give the same batches. On one H100 with 8 x
150k-point batches, 6 processes fed `sas-ray distill` at 5.52 steps/s and 8 threads at 4.89 (docs/perf/README.md):
processes are the default on a GPU (`GPU_LOADER_PROCESSES`); on the CPU the step itself is the bottleneck and
threads spare the processes' start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import DataLoader, Dataset

from sas_ray.distill.batch import Batch

GPU_LOADER_PROCESSES = 6  # 1.25 batches/s per CPU core (docs/perf): ~5 cores keep an H100's 5 steps/s fed
Plan = list[tuple[int, list[str]]]  # (step, scene ids) of each batch, in order
Load = Callable[[int, list[str]], Batch]  # (step, scene ids) -> that step's batch


def thread_batches(load: Load, plan: Plan, threads: int) -> Iterator[tuple[Batch, float]]:
    """(batch, seconds the caller waited for it) for each planned step, `threads` batches loading ahead."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        ahead = max(1, threads) + 1
        pending = [pool.submit(load, *entry) for entry in plan[:ahead]]
        try:
            for i in range(len(plan)):
                asked = time.perf_counter()
                batch = pending.pop(0).result()
                waited = time.perf_counter() - asked
                if i + ahead < len(plan):
                    pending.append(pool.submit(load, *plan[i + ahead]))
                yield batch, waited
        finally:  # the caller stopped early (end of an invocation): drop what is queued
            for future in pending:
                future.cancel()


class _PlannedBatches(Dataset):
    """The plan as a map-style dataset: item i is step plan[i]'s batch, built on the CPU by `load` (picklable)."""

    def __init__(self, load: Load, plan: Plan):
        self.load, self.plan = load, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        return self.load(*self.plan[i])


def process_batches(load: Load, plan: Plan, processes: int, ahead: int,
                    device: torch.device) -> Iterator[tuple[Batch, float]]:
    """(batch on `device`, seconds waited) for each planned step; `processes` spawned workers build CPU batches with
    `load` (picklable: a module function or a partial of one), `ahead` each in flight."""
    loader = DataLoader(_PlannedBatches(load, plan), batch_size=None, num_workers=processes,
                        prefetch_factor=max(1, ahead), pin_memory=device.type == "cuda",
                        multiprocessing_context="spawn")  # not fork: the training process holds CUDA and Ray
    batches = iter(loader)
    try:
        for _ in plan:
            asked = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - asked
            yield batch.to(device, non_blocking=True), waited
    finally:
        del batches  # its workers stop now (the only reference), not when a cycle is collected
