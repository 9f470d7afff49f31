"""Render speed: forward FPS and forward+backward iterations/s of ``talkgs.render.rasterize``.

Usage::

    .venv/bin/python benchmarks/render.py            # full grid + targets
    .venv/bin/python benchmarks/render.py --targets  # only the three issue #5 targets

Scene: a synthetic head-like cloud (3/4 of the Gaussians on a head-sized ellipsoid shell, 1/4 on
a shoulders ellipsoid), a 30-degree camera 0.55 m away; the head fills most of the frame
(alpha ~0.5 of the image), RGB colours, loss = sum of rgb + depth. CPU timings depend on the
other processes sharing the cores: the load average is printed with the results.
"""

from __future__ import annotations

import talkgs  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch/numba start)

import argparse
import math
import os
import platform
import statistics
import time

import torch

from talkgs.render import Camera, rasterize

# (N, resolution, target ms for forward+backward incl. projection on 2 CPU cores)
TARGETS = [(10_000, 128, 40.0), (10_000, 256, 60.0), (20_000, 512, 250.0)]
GRID_N = (5_000, 20_000, 50_000)
GRID_RES = (128, 256, 512)


def head_scene(n: int, res: int, device: torch.device, seed: int = 0):
    """``n`` Gaussians shaped like a head and shoulders, and a camera looking at them."""
    g = torch.Generator().manual_seed(seed)
    n_head = (3 * n) // 4

    def shell(k: int, axes: list[float], centre: list[float]) -> torch.Tensor:
        d = torch.nn.functional.normalize(torch.randn(k, 3, generator=g), dim=-1)
        r = 1.0 - 0.1 * torch.rand(k, 1, generator=g)
        return d * torch.tensor(axes) * r + torch.tensor(centre)

    means = torch.cat(
        [shell(n_head, [0.085, 0.115, 0.10], [0.0, -0.02, 0.55]), shell(n - n_head, [0.20, 0.10, 0.10], [0.0, 0.20, 0.62])]
    )
    spacing = math.sqrt(4 * math.pi * 0.1**2 / n_head)  # mean distance between head Gaussians
    scales = 0.6 * spacing * torch.exp(0.4 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = 0.3 + 0.7 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    cam = Camera.from_fov(30.0, res, res, device=device)
    return [t.to(device) for t in (means, quats, scales, opacities, colors)], cam


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_render(
    n: int, res: int, device: torch.device, backend: str, backward: bool, min_time: float
) -> tuple[float, float]:
    """(median, best) seconds per call (forward, or forward + backward).

    On a shared machine the best of many calls approximates the uncontended speed; the
    median is what a training loop sees under the current load."""
    tensors, cam = head_scene(n, res, device)
    leaves = [t.requires_grad_(backward) for t in tensors]
    bg = torch.ones(3, device=device)

    def once() -> None:
        out = rasterize(*leaves, cam, bg, backend=backend)
        if backward:
            (out.rgb.sum() + out.depth.sum()).backward()

    with torch.set_grad_enabled(backward):
        for _ in range(2):  # warm-up (numba compile / cache load, CUDA init)
            once()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 200):
            _sync(device)
            t = time.perf_counter()
            once()
            _sync(device)
            times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover - platform without getloadavg
        return "load average n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", action="store_true", help="only the three target configurations")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per configuration")
    args = parser.parse_args()

    import numba

    print(f"talkgs render benchmark | {platform.processor() or platform.machine()} | cpu cores {os.cpu_count()} | "
          f"torch {torch.__version__} threads {torch.get_num_threads()} | numba {numba.__version__} threads "
          f"{numba.get_num_threads()} | OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")  # fmt: skip
    print(f"before: {load()}  (the CPU timings below are only comparable at low load)")
    cpu = torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if has_cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)} (gsplat backend)")

    if not args.targets:
        header = f"{'N':>7} {'res':>5} | {'cpu fwd FPS':>11} {'cpu fwd+bwd it/s':>16}"
        if has_cuda:
            header += f" | {'gsplat fwd FPS':>14} {'gsplat fwd+bwd it/s':>19}"
        print(header)
        for n in GRID_N:
            for res in GRID_RES:
                f, _ = time_render(n, res, cpu, "cpu", False, args.min_time)
                fb, _ = time_render(n, res, cpu, "cpu", True, args.min_time)
                row = f"{n:>7} {res:>5} | {1 / f:>11.1f} {1 / fb:>16.1f}"
                if has_cuda:
                    cuda = torch.device("cuda")
                    gf, _ = time_render(n, res, cuda, "gsplat", False, args.min_time)
                    gfb, _ = time_render(n, res, cuda, "gsplat", True, args.min_time)
                    row += f" | {1 / gf:>14.1f} {1 / gfb:>19.1f}"
                print(row, flush=True)

    print("targets (CPU backend, forward+backward incl. projection; verdict on the median):")
    for n, res, target in TARGETS:
        med, best = time_render(n, res, cpu, "cpu", True, args.min_time)
        ms = 1000 * med
        verdict = "OK" if ms <= target else f"MISSED by {ms - target:.1f} ms"
        print(f"  {n:>6} Gaussians @ {res}^2: median {ms:7.1f} ms, best {1000 * best:7.1f} ms  "
              f"(target <= {target:.0f} ms)  {verdict}", flush=True)  # fmt: skip
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
