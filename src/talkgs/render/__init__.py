"""Rendering: one rasterize function for every variant (gsplat on CUDA, numba on CPU).

>>> out = rasterize(means, quats, scales, opacities, colors, camera, background)
>>> out.rgb, out.alpha, out.depth          # [H, W, 3], [H, W, 1], [H, W, 1]

See :mod:`talkgs.render.rasterize` for the backends and :mod:`talkgs.render.densify` for the
densification strategy that consumes ``RenderOutput.grad2d()``.
"""

from talkgs.render.camera import Camera
from talkgs.render.rasterize import BACKENDS, Backend, RenderOutput, rasterize

__all__ = ["Camera", "RenderOutput", "rasterize", "Backend", "BACKENDS"]
