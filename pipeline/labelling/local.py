"""The local engine: the labeller runs in this process, batch by batch, each result saved as it comes.

A labeller is built by a picklable factory (``factory()`` -> ``labeller(items) -> results``),
the same one the Ray engine sends to its actors, so both engines run the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm import tqdm

from pipeline.labelling.work import ItemResult, WorkFolder, WorkItem

Labeller = Callable[[Sequence[WorkItem]], list[ItemResult]]


def run_local(factory: Callable[[], Labeller], pending: Sequence[WorkItem], work: WorkFolder, batch_size: int,
              progress: bool = True) -> int:
    """Label ``pending`` in batches of ``batch_size``; return how many items were saved."""
    if not pending:
        return 0
    labeller = factory()
    saved = 0
    with tqdm(total=len(pending), desc="pseudo-label", unit="img", disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            batch = list(pending[start:start + batch_size])
            for result in labeller(batch):
                work.save(result)
                saved += 1
            bar.update(len(batch))
    return saved
