"""Static fit on a real frame with the CPU backend (integration: renderer + gradients + densify).

Fits 3D Gaussians (initialised on a plane in front of the camera) to the first frame of
``may_5s.mp4`` resized to 128x128, on CPU, and checks the face-region PSNR. Face region: the
convex hull of MediaPipe face-mesh FACE_OVAL landmarks (forehead to chin) detected on the
512x512 frame, rasterised at 128x128.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import talkgs  # noqa: F401  (sets OMP_WAIT_POLICY before torch starts)
import numpy as np
import pytest
import torch

from talkgs.render import Camera, rasterize
from talkgs.render.densify import DensifyConfig, DensifyStrategy

log = logging.getLogger(__name__)

SIZE = 128
N_INIT = 2000
ITERS = 400
TIME_BUDGET_S = 120.0  # the target: >= 30 dB within 2 minutes on 2 cores
PSNR_TARGET_DB = 30.0


def first_frame_rgb(video: Path) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(video))
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        raise RuntimeError(f"could not decode the first frame of {video}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def face_oval_mask(rgb: np.ndarray, size: int) -> np.ndarray:
    """``[size, size]`` bool: convex hull of MediaPipe's FACE_OVAL landmarks."""
    import cv2
    import mediapipe as mp

    face_mesh = mp.solutions.face_mesh
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as fm:
        result = fm.process(rgb)
    if not result.multi_face_landmarks:
        raise RuntimeError("MediaPipe found no face in the first frame of may_5s.mp4")
    lm = result.multi_face_landmarks[0].landmark
    ids = sorted({i for edge in face_mesh.FACEMESH_FACE_OVAL for i in edge})
    pts = np.array([[lm[i].x * size, lm[i].y * size] for i in ids], np.float32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [cv2.convexHull(pts).round().astype(np.int32)], 1)
    return mask.astype(bool)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    err = ((a - b) ** 2).mean(-1)
    mse = err[mask].mean() if mask is not None else err.mean()
    return -10.0 * math.log10(mse.item())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_static_fit_first_frame_face_psnr(shared_data: Path, record_property) -> None:
    import cv2

    video = shared_data / "videos" / "may_5s.mp4"
    frame = first_frame_rgb(video)
    target = torch.from_numpy(cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_AREA)).float() / 255.0
    face = torch.from_numpy(face_oval_mask(frame, SIZE))
    assert 0.1 < face.float().mean() < 0.6, "implausible face mask"

    torch.manual_seed(0)
    cam = Camera.from_fov(30.0, SIZE, SIZE, device="cpu")
    focal, depth = cam.K[0, 0].item(), 1.0
    pixel = depth / focal  # world size of one pixel on the plane z = depth
    uv = torch.rand(N_INIT, 2) * SIZE
    means = torch.cat([(uv - SIZE / 2) * pixel, depth + 0.01 * torch.randn(N_INIT, 1)], dim=-1)
    colors = target[uv[:, 1].long(), uv[:, 0].long()]
    params = torch.nn.ParameterDict(
        {
            "means": means,
            "scales": torch.full((N_INIT, 3), math.log(0.7 * pixel * SIZE / math.sqrt(N_INIT))),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(N_INIT, 1),
            "opacities": torch.full((N_INIT,), 2.0),
            "colors": colors,
        }
    )
    lrs = {"means": 0.3 * pixel, "scales": 0.01, "quats": 0.01, "opacities": 0.05, "colors": 0.01}
    opt = torch.optim.Adam([{"params": [p], "lr": lrs[k], "name": k} for k, p in params.items()], eps=1e-15)
    strategy = DensifyStrategy(
        DensifyConfig(refine_start_iter=100, refine_every=100, refine_stop_iter=300, reset_every=10**9),
        scene_scale=0.5 * SIZE * pixel,
        generator=torch.Generator().manual_seed(0),
    )
    background = target.mean(dim=(0, 1))

    def render():
        return rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                         torch.sigmoid(params["opacities"]), params["colors"], cam, background)  # fmt: skip

    t0 = time.perf_counter()
    for step in range(1, ITERS + 1):
        out = render()
        if step <= ITERS // 2:
            loss = (out.rgb - target).abs().mean()
        else:
            loss = (out.rgb - target).square().mean()
        loss.backward()
        strategy.step_post_backward(params, opt, step, out)
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t0

    with torch.no_grad():
        final = render().rgb.clamp(0.0, 1.0)
    face_psnr, full_psnr = psnr(final, target, face), psnr(final, target)
    n = params["means"].shape[0]
    msg = (f"static fit 128x128, {ITERS} iters: face PSNR {face_psnr:.2f} dB, full-frame {full_psnr:.2f} dB, "
           f"{elapsed:.1f} s, {N_INIT} -> {n} Gaussians")  # fmt: skip
    log.info(msg)
    print(msg)
    record_property("face_psnr_db", face_psnr)
    record_property("fit_seconds", elapsed)
    assert n > N_INIT, "densification never grew on real gradients"
    assert face_psnr >= PSNR_TARGET_DB, msg
    assert elapsed <= TIME_BUDGET_S, msg
