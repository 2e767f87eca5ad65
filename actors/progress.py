"""A step counter that Ray Train's rank 0 reports to and the driver's progress bar reads (no CPU reserved)."""

import ray


@ray.remote(num_cpus=0)
class StepProgress:
    """The last (step, total steps, loss) a training loop reported; None until its first step."""

    def __init__(self) -> None:
        self.last: tuple[int, int, float] | None = None

    def update(self, step: int, total: int, loss: float) -> None:
        self.last = (step, total, loss)

    def read(self) -> tuple[int, int, float] | None:
        return self.last
