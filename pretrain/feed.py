"""The loader as the train loop sees it: batches epoch after epoch, the loader's state and counters, and a
restart from a saved data state (a rollback goes back to a checkpoint's position, then skips past the
batches that diverged: consumed, so the loader's state -- and every later checkpoint -- is past them)."""
from typing import Any, Callable, Dict, Iterator, Optional


def _epochs(loader) -> Iterator[dict]:
    """Epoch after epoch (each `for` over the loader is one epoch); stops if an epoch yields nothing."""
    while True:
        yielded = 0
        for batch in loader:
            yielded += 1
            yield batch
        if yielded == 0:
            return


class DataFeed:
    """make_loader(data_state or None) -> loader (iterable, state_dict(), counters, steps_per_epoch)."""

    def __init__(self, make_loader: Callable[[Optional[dict]], Any], state: Optional[dict] = None):
        self.make_loader = make_loader
        self.restart(state)

    def restart(self, state: Optional[dict]) -> None:
        self.loader = self.make_loader(state)
        self._batches = _epochs(self.loader)

    def next(self) -> Optional[dict]:
        """The next batch; None when the data ran out (epoch mode)."""
        return next(self._batches, None)

    def skip(self, n: int) -> int:
        """Consume up to n batches unused; -> how many there were."""
        skipped = 0
        while skipped < n and self.next() is not None:
            skipped += 1
        return skipped

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def counters(self) -> Dict[str, int]:
        return dict(self.loader.counters)
