"""Model components: registry (component configs, discovery), triplane, conditions, deformers
(zero-init identity), the deformable head, parameter dict."""

from __future__ import annotations

import talkgs  # noqa: F401  (first: OMP_WAIT_POLICY)
import subprocess
import sys

import pytest
import torch

from talkgs.configlib import ConfigError, from_dict
from talkgs.models import registry
from talkgs.models.canonical import ExplicitConfig, TriplaneMLPConfig
from talkgs.models.conditioning import FrameCondition, sinusoidal_encoding
from talkgs.models.contract import BuildContext
from talkgs.models.deformers.gaussiantalker import SpatialAudioAttentionConfig
from talkgs.models.deformers.identity import IdentityConfig
from talkgs.models.encoders.triplane import TriplaneConfig
from talkgs.models.gaussians import GaussianAttributes, GaussianParams
from talkgs.models.heads.deformable import ConditionParams, DeformableHead, DeformableHeadConfig
from talkgs.render import Camera, rasterize


def _cond(seed: int = 0, window: int = 4, dim: int = 8) -> FrameCondition:
    g = torch.Generator().manual_seed(seed)
    return FrameCondition(audio=torch.randn(window, dim, generator=g), au45=torch.tensor(2.5), viewmat=torch.eye(4))


def _ctx(n: int = 120, seed: int = 0) -> BuildContext:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 1.0])
    cloud = (means, torch.rand(n, 3, generator=g), torch.full((n, 3), -4.0))
    return BuildContext(audio_window=4, audio_dim=8, point_cloud=lambda ident, spec: cloud)


def _small_model(deformer=None, **kw) -> DeformableHead:  # noqa: ANN001
    cfg = DeformableHeadConfig(
        spatial=TriplaneConfig(resolution=8, channels=4),
        canonical=TriplaneMLPConfig(sh_degree=1, hidden=16),
        deformer=deformer or SpatialAudioAttentionConfig(dim=16, ffn_dim=16, head_hidden=16, heads=2),
        **kw,
    )
    torch.manual_seed(0)
    return DeformableHead(cfg, _ctx())


def test_registry_lists_builds_and_names_unknown() -> None:
    for kind, name in [("deformer", "identity"), ("deformer", "spatial_audio_attention"), ("spatial_encoder", "triplane"),
                       ("canonical", "triplane_mlp"), ("canonical", "explicit"), ("audio_encoder", "window_conv"),
                       ("condition", "audio"), ("condition", "eye"), ("condition", "view"), ("condition", "null"),
                       ("loss", "lip"), ("loss", "l1"), ("head", "deformable"), ("sampler", "uniform"),
                       ("sampler", "incremental")]:  # fmt: skip
        assert name in registry.names(kind)
    enc = registry.build("spatial_encoder", {"name": "triplane", "channels": 4, "resolution": 8, "multires": [1, 2]})
    assert enc(torch.rand(10, 3)).shape == (10, 8)
    with pytest.raises(registry.RegistryError, match="Did you mean 'triplane'"):
        registry.build("spatial_encoder", "triplan")
    with pytest.raises(registry.RegistryError, match="unknown component kind"):
        registry.names("deformers")


def test_component_configs_are_strict_and_chosen_by_name() -> None:
    """Each component owns its config; an unknown key names the closest valid one (no silent
    swallowing), and the section's ``name`` picks which config class parses it."""
    cfg = from_dict(DeformableHeadConfig, {"deformer": {"name": "spatial_audio_attention", "layers": 1}, "conditions": {"tokens": ["audio", {"name": "eye", "num_freqs": 2}]}})
    assert isinstance(cfg.deformer, SpatialAudioAttentionConfig) and cfg.deformer.layers == 1
    assert [t.name for t in cfg.conditions.tokens] == ["audio", "eye"] and cfg.conditions.tokens[1].num_freqs == 2
    with pytest.raises(ConfigError, match="unknown key 'layer'.*Did you mean 'layers'"):
        from_dict(DeformableHeadConfig, {"deformer": {"layer": 1}})
    with pytest.raises(ConfigError, match="deformer: unknown key 'layers'"):  # the identity deformer has no options
        from_dict(DeformableHeadConfig, {"deformer": {"name": "identity", "layers": 1}})
    with pytest.raises(ConfigError, match="Did you mean 'identity'"):
        from_dict(DeformableHeadConfig, {"deformer": {"name": "identty"}})
    with pytest.raises(ConfigError, match="num_freq.*Did you mean 'num_freqs'"):
        from_dict(ConditionParams, {"tokens": [{"name": "eye", "num_freq": 2}]})
    assert isinstance(from_dict(DeformableHeadConfig, {"deformer": {"name": "identity"}}).deformer, IdentityConfig)


def test_components_are_found_without_an_import_list() -> None:
    """A fresh interpreter that imports only the registry finds every built-in component (the
    registry walks talkgs.models and talkgs.train)."""
    code = "from talkgs.models import registry; print(registry.names('sampler'), registry.names('head'), registry.names('loss'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "incremental" in out and "deformable" in out and "dssim" in out


def test_triplane_is_a_product_of_interpolated_planes() -> None:
    from talkgs.models.encoders.triplane import Triplane

    tp = Triplane(TriplaneConfig(channels=2, resolution=4, multires=(1,)))
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
    a = registry.build("audio_encoder", "window_conv", in_dim=8, window=5, dim=16)  # the default config
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
    deformed, canonical = m.attributes(cond, deform=True), m.attributes(cond, deform=False)
    cam = Camera.from_fov(40.0, 32, 32, device="cpu")
    r1 = rasterize(**deformed.activated(), camera=cam, sh_degree=1, backend="reference").rgb
    r0 = rasterize(**canonical.activated(), camera=cam, sh_degree=1, backend="reference").rgb
    assert torch.equal(r1, r0)
    # one optimiser step on the heads makes the offsets audio dependent
    opt = torch.optim.Adam(m.deformer.parameters(), lr=1e-2)
    loss = m.attributes(cond, deform=True).means.sum() + m.attributes(cond, deform=True).sh.sum()
    loss.backward()
    opt.step()
    o1, o2 = m.deform_offsets(_cond(1))["means"], m.deform_offsets(_cond(2))["means"]
    assert o1.abs().sum() > 0 and not torch.allclose(o1, o2)


def test_identity_deformer_has_no_parameters_and_no_tokens() -> None:
    m = _small_model(IdentityConfig())
    assert sum(p.numel() for p in m.deformer.parameters()) == 0
    assert not m.uses_tokens and len(m.tokens) == 0
    a = m.attributes(_cond(), deform=True)
    b = m.attributes(None, deform=False)
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
    cfg = DeformableHeadConfig(canonical=ExplicitConfig(sh_degree=0), deformer=IdentityConfig())
    m = DeformableHead(cfg, _ctx(20))
    assert set(m.gaussians.keys()) == {"means", "quats", "scales", "opacities", "sh"}
    assert {g for g, ps in m.param_groups().items() if ps} == {"means", "gaussians", "spatial"}  # spatial: features for deformers
    a = m.attributes(None, deform=False)
    assert a.sh.shape == (20, 1, 3) and torch.allclose(torch.sigmoid(a.opacity_logits), torch.full((20,), 0.1))
