"""``DistributedBatchSampler``: global batches cut into one slice per data-parallel rank."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import BatchSampler, Sampler


class DistributedBatchSampler(BatchSampler):
    """Groups ``sampler``'s indices into global batches of ``batch_size`` (all data-parallel
    ranks together) and yields this rank's slice of ``batch_size // world_size`` indices.
    Model-parallel peers share a data-parallel rank, so they get the same data.

    ``start_iter`` batches are skipped at the next iteration (resuming a run without reading
    the skipped samples), then it returns to 0. With ``drop_last=False`` the last, partial
    global batch is spread over the ranks in order; a rank left without a sample gets the
    batch's first index as a placeholder, and ``last_shape`` says how many real samples each
    rank holds in that batch so evaluation can drop the placeholders.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch_size: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(sampler, batch_size, drop_last)
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} data-parallel ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside the data-parallel world of size {world_size}")
        self.rank = rank
        self.world_size = world_size
        self.start_iter = 0
        self.per_rank = batch_size // world_size

    @property
    def last_shape(self) -> list[int]:
        """Real samples per rank in the last batch (all ``per_rank`` when it is full)."""
        remainder = len(self.sampler) % self.batch_size
        if remainder == 0 or self.drop_last:
            return [self.per_rank] * self.world_size
        return [min(self.per_rank, max(0, remainder - r * self.per_rank)) for r in range(self.world_size)]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.start_iter = self.start_iter, 0
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                if skip:
                    skip -= 1
                else:
                    yield self._slice(batch)
                batch = []
        if batch and not self.drop_last and not skip:
            yield self._slice(batch)

    def _slice(self, batch: list[int]) -> list[int]:
        start = self.rank * self.per_rank
        return batch[start : start + self.per_rank] or batch[:1]
