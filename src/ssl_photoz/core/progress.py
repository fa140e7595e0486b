"""Progress bars and logging for long stages: a tqdm bar on the terminal and lines in the log.

Snakemake rules redirect stderr into the rule's log file; tqdm then writes its bar there too, with
a slower refresh so the log stays readable.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    items: Iterable[T], desc: str, unit: str = "it", total: int | None = None
) -> Iterator[T]:
    """Iterate with a progress bar on stderr (every few seconds when stderr is a file)."""
    interactive = sys.stderr.isatty()
    return iter(
        tqdm(
            items,
            desc=desc,
            unit=unit,
            total=total,
            file=sys.stderr,
            mininterval=0.5 if interactive else 5.0,
            dynamic_ncols=interactive,
        )
    )


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, if given, to a file (the rule's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # faiss logs each CPU-feature probe at INFO: noise in every similarity log.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
