"""Loads samples with their decoded media, in order, with a few decode threads ahead of the consumer.

A row whose media is missing or corrupt, or lies outside the dataset's folder and ``media_roots`` ("outside"), is
skipped and counted by reason (``skipped``), never silently dropped and never fatal to a run: the caller exports the
counts as metrics. ``on_error="raise"`` turns skips into errors.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from videoqa.schema import Sample, outside_roots, resolve_media
from videoqa.video import FrameSampling, MediaError, VideoClip, load_image, load_video


@dataclass
class LoadedSample:
    sample: Sample
    video: VideoClip | None = None
    image: np.ndarray | None = None


class OutsideRoots(MediaError):
    """A row's media path outside the dataset's folder and ``data.media_roots``."""


SKIP_REASONS = ("missing", "corrupt", "outside")


class MediaLoader:
    def __init__(
        self,
        root: str | Path,
        sampling: FrameSampling = FrameSampling(),
        workers: int = 2,
        on_error: str = "skip",
        image_max_pixels: int = 256 * 28 * 28,
        media_roots: Sequence[str | Path] = (),
    ):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.root, self.sampling, self.workers, self.on_error = Path(root), sampling, workers, on_error
        self.image_max_pixels = image_max_pixels
        self.roots = (self.root, *map(Path, media_roots))  # the folders rows' media may come from
        self.skipped: Counter[str] = Counter()
        self.errors: list[str] = []  # the last few messages, for logs

    def load(self, sample: Sample) -> LoadedSample:
        path = resolve_media(sample.path, self.root)
        if outside_roots(path, self.roots):
            raise OutsideRoots(
                f"{path} is outside the dataset's folder {self.root} and data.media_roots: add the folder it is in "
                "to data.media_roots if the rows are yours to trust"
            )
        if sample.data_type == "video":
            return LoadedSample(sample, video=load_video(path, self.sampling))
        return LoadedSample(
            sample,
            image=load_image(
                path,
                self.sampling.min_pixels,
                max(self.image_max_pixels, self.sampling.min_pixels),
                self.sampling.factor,
            ),
        )

    def _try(self, sample: Sample) -> LoadedSample | MediaError:
        try:
            return self.load(sample)
        except MediaError as e:
            return e

    def __call__(self, samples: Iterable[Sample]) -> Iterator[LoadedSample]:
        """Yields loaded samples in input order, decoding up to ``workers * 2`` ahead (``workers=0``: inline)."""
        for _, item in self.results(samples):
            if not isinstance(item, str):
                yield item

    def results(self, samples: Iterable[Sample]) -> Iterator[tuple[Sample, LoadedSample | str]]:
        """Every sample in input order with its loaded media, or the skip reason (one of ``SKIP_REASONS``)."""
        samples = iter(samples)
        if self.workers == 0:
            for s in samples:
                yield s, self._emit(self._try(s))
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            pending = []
            for s in samples:
                pending.append((s, pool.submit(self._try, s)))
                if len(pending) >= self.workers * 2:
                    s0, fut = pending.pop(0)
                    yield s0, self._emit(fut.result())
            for s0, fut in pending:
                yield s0, self._emit(fut.result())

    def _emit(self, item: LoadedSample | MediaError) -> LoadedSample | str:
        if isinstance(item, MediaError):
            if self.on_error == "raise":
                raise item
            if isinstance(item, OutsideRoots):
                reason = "outside"
            else:
                reason = "missing" if "not found" in str(item) else "corrupt"
            self.skipped[reason] += 1
            self.errors = (self.errors + [str(item)])[-20:]
            return reason
        return item
