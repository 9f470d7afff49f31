"""Model components: registry, triplane, conditions, deformers (zero-init identity), parameter dict."""

from __future__ import annotations

import talkgs  # noqa: F401  (first: OMP_WAIT_POLICY)
import pytest
import torch

from talkgs.models import registry
from talkgs.models.conditioning import FrameCondition, sinusoidal_encoding
from talkgs.models.gaussians import GaussianAttributes, GaussianParams
from talkgs.models.head import TalkingHead
from talkgs.models.params import CanonicalParams, DeformerParams, ModelParams, SpatialEncoderParams
from talkgs.render import Camera, rasterize


def _cond(seed: int = 0, window: int = 4, dim: int = 8) -> FrameCondition:
    g = torch.Generator().manual_seed(seed)
    return FrameCondition(audio=torch.randn(window, dim, generator=g), au45=torch.tensor(2.5), viewmat=torch.eye(4))


def _small_model(**deformer) -> TalkingHead:
    p = ModelParams(
        spatial=SpatialEncoderParams(resolution=8, channels=4),
        canonical=CanonicalParams(sh_degree=1, hidden=16),
        deformer=DeformerParams(dim=16, ffn_dim=16, head_hidden=16, heads=2, **deformer),
    )
    torch.manual_seed(0)
    means = torch.randn(120, 3) * 0.1 + torch.tensor([0.0, 0.0, 1.0])
    return TalkingHead(p, means=means, audio_window=4, audio_dim=8)


def test_registry_lists_builds_and_names_unknown() -> None:
    for kind, name in [("deformer", "identity"), ("deformer", "spatial_audio_attention"), ("spatial_encoder", "triplane"),
                       ("canonical", "triplane_mlp"), ("canonical", "explicit"), ("audio_encoder", "window_conv"),
                       ("condition", "eye"), ("condition", "view"), ("condition", "null"), ("loss", "lip")]:  # fmt: skip
        assert name in registry.names(kind)
    enc = registry.build("spatial_encoder", "triplane", channels=4, resolution=8, multires=[1, 2])
    assert enc(torch.rand(10, 3)).shape == (10, 8)
    with pytest.raises(registry.RegistryError, match="Did you mean 'triplane'"):
        registry.build("spatial_encoder", "triplan")
    with pytest.raises(registry.RegistryError, match="unknown component kind"):
        registry.names("deformers")


def test_triplane_is_a_product_of_interpolated_planes() -> None:
    from talkgs.models.encoders.triplane import Triplane

    tp = Triplane(channels=2, resolution=4, multires=(1,))
    with torch.no_grad():
        tp.planes[0].fill_(1.0)
        tp.planes[0][0].fill_(2.0)  # xy plane = 2, yz = zx = 1 -> product 2
    f = tp(torch.rand(5, 3) * 2 - 1)
    assert torch.allclose(f, torch.full((5, 2), 2.0))
    # gradients reach the planes
    tp(torch.rand(5, 3)).sum().backward()
    assert tp.planes[0].grad is not None and tp.planes[0].grad.abs().sum() > 0


def test_condition_tokens_and_sinusoidal_encoding() -> None:
    e = sinusoidal_encoding(torch.tensor([0.0, 0.5]), 3)
    assert e.shape == (2, 7)
    assert torch.allclose(e[0], torch.tensor([0.0, 0, 0, 0, 1, 1, 1]))
    m = _small_model()
    toks = m.condition_tokens(_cond())
    assert toks.shape == (4, 64)  # audio, eye, view, null
    a = registry.build("audio_encoder", "window_conv", in_dim=8, window=5, dim=16)
    assert a(torch.randn(5, 8)).shape == (16,)
    assert a(torch.randn(3, 5, 8)).shape == (3, 16)
    with pytest.raises(ValueError, match=r"expected \[B, W=5, C=8\]"):
        a(torch.randn(4, 8))


def test_deformer_starts_as_identity_and_then_moves() -> None:
    """Zero-initialised heads: the deformed Gaussians (and the render) equal the canonical ones at init."""
    m = _small_model()
    cond = _cond()
    offsets = m.deform_offsets(cond)
    assert set(offsets) == {"means", "quats", "log_scales", "opacity_logits", "sh"}
    for k, v in offsets.items():
        assert torch.count_nonzero(v) == 0, k
    deformed, canonical = m(cond, deform=True), m(cond, deform=False)
    cam = Camera.from_fov(40.0, 32, 32, device="cpu")
    r1 = rasterize(**deformed.activated(), camera=cam, sh_degree=1, backend="reference").rgb
    r0 = rasterize(**canonical.activated(), camera=cam, sh_degree=1, backend="reference").rgb
    assert torch.equal(r1, r0)
    # one optimiser step on the heads makes the offsets audio dependent
    opt = torch.optim.Adam(m.deformer.parameters(), lr=1e-2)
    loss = m(cond, deform=True).means.sum() + m(cond, deform=True).sh.sum()
    loss.backward()
    opt.step()
    o1, o2 = m.deform_offsets(_cond(1))["means"], m.deform_offsets(_cond(2))["means"]
    assert o1.abs().sum() > 0 and not torch.allclose(o1, o2)


def test_identity_deformer_has_no_parameters_and_no_tokens() -> None:
    m = _small_model(name="identity")
    assert sum(p.numel() for p in m.deformer.parameters()) == 0
    assert not m.uses_tokens and len(m.tokens) == 0
    a = m(_cond(), deform=True)
    b = m(None, deform=False)
    assert torch.equal(a.means, b.means) and torch.equal(a.sh, b.sh)


def test_gaussian_params_resize_on_load() -> None:
    m = _small_model()
    state = m.state_dict()
    state["gaussians.params.means"] = torch.randn(77, 3)
    m2 = _small_model()
    m2.load_state_dict(state)
    assert m2.n == 77 and torch.equal(m2.gaussians["means"], state["gaussians.params.means"])
    with pytest.raises(ValueError, match="first dimension"):
        GaussianParams({"means": torch.zeros(3, 3), "sh": torch.zeros(4, 1, 3)})
    with pytest.raises(ValueError, match="sh"):
        GaussianAttributes(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3))


def test_explicit_canonical_stores_gsplat_layout() -> None:
    p = ModelParams(canonical=CanonicalParams(name="explicit", sh_degree=0), deformer=DeformerParams(name="identity"))
    m = TalkingHead(p, means=torch.randn(20, 3), rgb=torch.rand(20, 3), audio_window=2, audio_dim=3)
    assert set(m.gaussians.keys()) == {"means", "quats", "scales", "opacities", "sh"}
    a = m(None, deform=False)
    assert a.sh.shape == (20, 1, 3) and torch.allclose(torch.sigmoid(a.opacity_logits), torch.full((20,), 0.1))
