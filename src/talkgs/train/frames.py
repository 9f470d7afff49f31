"""Frames read from disk when indexed: a clip's frames without holding the clip in memory.

:class:`LazyFrames` stands in for a ``uint8 [T, H, W, C]`` (or ``[T, H, W]``) tensor where a
consumer reads a few frames at a time (rendering the test split, synthesis): ``frames[i]``
decodes one image file, ``frames[a:b]`` / ``frames[index_tensor]`` stack a few, ``shape`` and
``len`` need no decoding. A 6,500-frame clip at 512² is 5 GB as an array; this holds one frame
(plus a small cache of the last few). Training, which visits random frames every step, keeps
loading arrays at its (small) training resolution.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["LazyFrames"]


class LazyFrames:
    """Image files as a lazily decoded ``uint8`` frame sequence.

    Args:
        paths: one file per frame.
        read: ``path -> np.ndarray`` (``[H, W, C]`` or ``[H, W]``, uint8); raises on a bad file.
        shape: the shape of one decoded frame (checked on every read).
        cache: how many decoded frames to keep (most recently used).
        error: the exception raised for a frame of another shape (the loader's ``DataError``).
    """

    def __init__(
        self, paths: Sequence[Path], read: Callable[[Path], np.ndarray], shape: tuple[int, ...], cache: int = 8, error: type[Exception] = ValueError
    ) -> None:
        self.error = error
        self.paths = list(paths)
        self.read = read
        self.frame_shape = tuple(int(s) for s in shape)
        self.cache_size = int(cache)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), *self.frame_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def ndim(self) -> int:
        return 1 + len(self.frame_shape)

    def __len__(self) -> int:
        return len(self.paths)

    def _frame(self, i: int) -> Tensor:
        n = len(self.paths)
        if not -n <= i < n:
            raise IndexError(f"frame {i} out of range for {n} frames")
        i %= n
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        img = self.read(self.paths[i])
        if tuple(img.shape) != self.frame_shape:
            raise self.error(f"{self.paths[i]}: {list(img.shape)}, unlike the clip's other frames {list(self.frame_shape)}; rerun the stage that writes it")
        t = torch.from_numpy(np.ascontiguousarray(img))
        self._cache[i] = t
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return t

    def __getitem__(self, key: int | slice | Tensor | np.ndarray | list[int]) -> Tensor:
        if isinstance(key, (int, np.integer)):
            return self._frame(int(key))
        if isinstance(key, Tensor) and key.ndim == 0:
            return self._frame(int(key))
        idx = range(len(self.paths))[key] if isinstance(key, slice) else [int(k) for k in key]
        if len(idx) == 0:
            return torch.zeros((0, *self.frame_shape), dtype=torch.uint8)
        return torch.stack([self._frame(i) for i in idx])

    def numpy(self) -> np.ndarray:
        """Every frame as one array (decodes the whole clip: for small clips and tests)."""
        return self[:].numpy()

    def materialize(self) -> Tensor:
        """Every frame as one tensor."""
        return self[:]
