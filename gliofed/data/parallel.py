"""One process-pool map for the data layer (synthesis, checking, preprocessing)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["process_map"]

T = TypeVar("T")
R = TypeVar("R")


def process_map(fn: Callable[[T], R], tasks: Sequence[T] | Iterable[T], workers: int = 1, desc: str = "",
                unit: str = "it", progress: bool = True, chunksize: int = 1,
                initializer: Callable[[], None] | None = None) -> list[R]:
    """``[fn(t) for t in tasks]``, in order, in ``workers`` processes when more than one is asked for.

    Args:
        fn: a picklable (module-level) function of one task.
        tasks: the tasks (picklable).
        workers: processes (1 = in this process, no pool).
        desc: progress bar label. unit: progress bar unit.
        progress: show a progress bar.
        chunksize: tasks sent to a worker at once.
        initializer: run once in each worker process (e.g. limit torch threads).

    Returns:
        the results in the order of ``tasks``.
    """
    tasks = list(tasks)
    bar = dict(total=len(tasks), desc=desc, unit=unit, disable=not progress or not tasks)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=initializer) as pool:
            return list(tqdm(pool.map(fn, tasks, chunksize=chunksize), **bar))
    return [fn(task) for task in tqdm(tasks, **bar)]
