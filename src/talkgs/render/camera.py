"""Pinhole camera shared by every render backend.

Conventions (identical to gsplat's ``rasterization``):

- ``viewmat`` is the world-to-camera transform, ``[4, 4]``, OpenCV axes (x right, y down,
  z forward): a world point ``p`` maps to ``viewmat[:3, :3] @ p + viewmat[:3, 3]``.
- ``K`` is the ``[3, 3]`` pinhole intrinsic matrix in pixels (``fx, fy, cx, cy``).
- Pixel ``(row i, column j)`` has its centre at image coordinates ``(j + 0.5, i + 0.5)``;
  the image spans ``[0, width] x [0, height]``. A camera-space point ``(x, y, z)`` projects
  to ``(fx * x / z + cx, fy * y / z + cy)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Camera"]


@dataclass(frozen=True)
class Camera:
    """One pinhole camera.

    Attributes:
        viewmat: world-to-camera transform, ``[4, 4]`` (OpenCV axes).
        K: intrinsics in pixels, ``[3, 3]``.
        width: image width ``W`` in pixels.
        height: image height ``H`` in pixels.

    ``viewmat`` may require grad (camera refinement); ``K`` is not differentiated by any
    backend (gsplat does not differentiate intrinsics either).
    """

    viewmat: Tensor
    K: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if not isinstance(self.viewmat, Tensor) or tuple(self.viewmat.shape) != (4, 4):
            raise ValueError(
                f"Camera.viewmat: expected a [4, 4] world-to-camera tensor, found "
                f"{_describe(self.viewmat)}"
            )
        if not isinstance(self.K, Tensor) or tuple(self.K.shape) != (3, 3):
            raise ValueError(f"Camera.K: expected a [3, 3] intrinsics tensor, found {_describe(self.K)}")
        if self.K.device != self.viewmat.device:
            raise ValueError(
                f"Camera: viewmat is on {self.viewmat.device} but K is on {self.K.device}; "
                "put both on the device you render on"
            )
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Camera.{name}: expected a positive int, found {value!r}")

    @property
    def device(self) -> torch.device:
        return self.viewmat.device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Camera:
        """This camera with its tensors on ``device`` (and ``dtype`` when given)."""
        return Camera(
            self.viewmat.to(device=device, dtype=dtype), self.K.to(device=device, dtype=dtype), self.width, self.height
        )

    @staticmethod
    def from_fov(
        fov_y_deg: float,
        width: int,
        height: int,
        viewmat: Tensor | None = None,
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> Camera:
        """A centred pinhole camera with square pixels and vertical field of view ``fov_y_deg``.

        ``viewmat`` defaults to the identity (camera at the origin looking down +z).
        """
        f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
        K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], device=device, dtype=dtype)
        if viewmat is None:
            viewmat = torch.eye(4, device=device, dtype=dtype)
        return Camera(viewmat, K, width, height)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"shape {list(x.shape)}"
    return type(x).__name__
