"""``audio_encoder/sync_enhanced``: SyncGaussian's Sync-Enhanced Encoder (§3.2, Fig. 3, eq. 4).

Two frozen extractors see the same speech window: an *audio-to-text* one (HuBERT in the paper;
here the variant's audio feature, the log-mel windows by default) and an *audio-to-visual* one
(SyncTalk's AVE in the paper, pretrained on LRS2; here the audio tower of the pipeline's own
sync expert, stage ``sync_expert``, on the window's mel columns). Learnable adapters map them
to ``D``::

    a'_hu  = FC(LeakyReLU(Conv1d(...)))            (window_conv: strided 1-D convs + MLP)
    a'_ave = FC(LeakyReLU(AVE(window)))

and the *sync adaptation* fuses them three times in sequence::

    h_0 = a'_hu
    h_k = SyncEncoder_k(h_{k-1} - a'_ave) ⊙ a'_ave        SyncEncoder = Conv1d → LayerNorm → LeakyReLU

The result ``a = h_3`` is the frame's audio feature. The caller smooths ``a`` and ``a'_ave`` over
neighbouring frames with the same attention (Match-ATT: TalkingGaussian's AudioAttNet,
:class:`talkgs.models.deformers.talkinggaussian.SmoothedAudio`) and ties them with
``L_ah = 1 - cos(a, a_ave)`` (eq. 4, the head loss ``audio``, λ₂ = 0.5): :meth:`forward_pair`
returns both.

Ablations (Table 6) are options: ``use_ave: false`` (w/o a_ave: ``a = a'_hu``, no L_ah),
``use_hu: false`` (w/o a_hu: ``a = a'_ave``), ``tie: false`` (w/o L_ah), ``adaptation: subtract``
(``a = a'_hu - a'_ave`` straight into the motion field).

The frozen audio tower is read from the ``sync_expert`` asset when the head is built for training
and kept in the model's state (its weights as buffers, never trained; its architecture in the
``spec_json`` buffer), so a trained checkpoint renders without the asset.

Deviations (README, SyncGaussian section): the paper's sync-encoder kernel sizes and widths are
not in the text; its Conv1d here runs over the feature axis (one channel, kernel 3) — an
assumption, as is LeakyReLU slope 0.02 (ER-NeRF's). HuBERT is replaced by the variant's feature
when its weights are absent (they cannot be fetched here) and AVE by the pipeline's sync expert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn

from talkgs.configlib import WIDTH, ConfigError, Range
from talkgs.models.conditioning.audio import AudioEncoderConfig, AudioWindowEncoder, WindowConvConfig
from talkgs.models.registry import register

CHANNEL = Range(0, 65536)
"""A feature-channel index."""

__all__ = ["SyncEnhancedConfig", "SyncEnhancedEncoder", "FrozenAudioTower"]


@dataclass(frozen=True)
class SyncEnhancedConfig(AudioEncoderConfig):
    """``audio_encoder/sync_enhanced`` (see the module docstring)."""

    name: str = "sync_enhanced"
    hidden: Annotated[int, WIDTH] = 64
    """Channels of a'_hu's convolutions and MLP (its ``window_conv``)."""
    blocks: Annotated[int, Range(1, 8)] = 3
    """Sync adaptations in sequence (SyncGaussian: three)."""
    kernel: Annotated[int, Range(1, 31)] = 3
    """Kernel of each sync-encoder's Conv1d over the feature axis (odd; not given in the paper)."""
    adaptation: Literal["sync", "subtract"] = "sync"
    """``sync``: the three sync adaptations; ``subtract``: ``a'_hu - a'_ave`` (Table 6, "directly subtract")."""
    use_hu: bool = True
    """False: w/o a_hu (Table 6): ``a = a'_ave``."""
    use_ave: bool = True
    """False: w/o a_ave (Table 6): ``a = a'_hu``, no L_ah and no sync expert needed."""
    tie: bool = True
    """False: w/o L_ah (Table 6): no target is returned, so the head loss ``audio`` is 0."""
    hu_channels: tuple[Annotated[int, CHANNEL], Annotated[int, CHANNEL]] | None = None
    """``[start, stop)`` of the feature channels a'_hu reads (e.g. the phonetic part of
    ``mel+phonemes``); None: all."""
    ave_channels: tuple[Annotated[int, CHANNEL], Annotated[int, CHANNEL]] | None = None
    """``[start, stop)`` of the feature channels the sync expert reads (its mel bands, e.g. the mel
    part of ``mel+phonemes``); None: all (the variant's feature must then be the expert's mel)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, found {self.kernel}")
        if not (self.use_hu or self.use_ave):
            raise ValueError("use_hu and use_ave cannot both be false: the encoder would have no input")
        for name, sl in (("hu_channels", self.hu_channels), ("ave_channels", self.ave_channels)):
            if sl is not None and not 0 <= sl[0] < sl[1]:
                raise ValueError(f"{name}: expected [start, stop) with 0 <= start < stop, found {list(sl)}")

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        """The sync expert, unless the a_ave branch is ablated."""
        return ("sync_expert",) if self.use_ave else ()


def _slice(x: Tensor, sl: tuple[int, int] | None) -> Tensor:
    return x if sl is None else x[..., sl[0] : sl[1]]


def _channels(sl: tuple[int, int] | None, in_dim: int, what: str) -> int:
    if sl is None:
        return in_dim
    if sl[1] > in_dim:
        raise ConfigError(f"audio_encoder sync_enhanced: {what} {list(sl)} exceeds the audio feature's {in_dim} channels")
    return sl[1] - sl[0]


class FrozenAudioTower(nn.Module):
    """The audio branch of a sync expert (``embed_audio``), frozen: ``forward(x [B, W, C])`` →
    L2-normalised embeddings ``[B, E]`` (``x`` transposed to the expert's ``[B, 1, C, W]``).

    Built from the expert's checkpoint (training) or empty (loading a trained head: the buffer
    ``spec_json``, the expert's architecture as UTF-8 JSON, rebuilds it before its weights are
    loaded). Its weights are buffers and it stays in eval mode (its batch norms never update)."""

    def __init__(self, path: Any = None, *, in_dim: int, window: int) -> None:
        super().__init__()
        self.in_dim, self.window = in_dim, window
        self.net: nn.Module | None = None
        self._arch: dict[str, Any] | None = None
        self.register_buffer("spec_json", torch.zeros(0, dtype=torch.uint8))
        if path is not None:
            from talkgs.sync.model import load_expert

            net, info = load_expert(path, where="sync_expert asset")
            self._adopt(str(info.get("arch", getattr(net, "arch", ""))), dict(info.get("net") or {}), net)

    def _adopt(self, arch: str, net_kwargs: dict[str, Any], net: nn.Module | None = None) -> None:
        from talkgs.sync.model import build_net

        if arch != "talkgs":
            raise ConfigError(
                f"audio_encoder sync_enhanced: the sync expert is a {arch!r} network; the encoder needs one that reads the "
                "features' mel windows (arch 'talkgs', trained by the sync_expert stage). Wav2Lip's expert takes its own mel "
                "spectrogram of the raw audio: set sync_expert.weights: null to train one"
            )
        c, w = net_kwargs["spec"]["audio_shape"]
        if (int(c), int(w)) != (self.in_dim, self.window):
            raise ConfigError(
                f"audio_encoder sync_enhanced: the sync expert takes mel windows of {c} bands x {w} columns, the encoder is given "
                f"{self.in_dim} x {self.window} (ave_channels / the variant's audio_feature): retrain the expert on these features"
            )
        full = net if net is not None else build_net(arch, net_kwargs)
        tower = nn.Module()
        tower.audio = full.audio  # type: ignore[attr-defined]
        tower.register_buffer("audio_mean", full.audio_mean.detach().clone())  # type: ignore[attr-defined]
        tower.register_buffer("audio_std", full.audio_std.detach().clone())  # type: ignore[attr-defined]
        for m in tower.modules():  # frozen: weights as buffers, never in a parameter group
            for k, p in list(m._parameters.items()):
                if p is not None:
                    del m._parameters[k]
                    m.register_buffer(k, p.detach().clone())
        self.net = tower.eval()
        self._arch = {"arch": arch, "net": net_kwargs}
        raw = json.dumps(self._arch, sort_keys=True).encode()
        self.spec_json = torch.tensor(list(raw), dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "spec_json"
        if self.net is None and key in state_dict and state_dict[key].numel():  # a trained head: rebuild the expert first
            spec = json.loads(bytes(state_dict[key].tolist()).decode())
            self._adopt(spec["arch"], dict(spec["net"]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True) -> FrozenAudioTower:
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    @property
    def dim(self) -> int:
        if self._arch is None:
            raise RuntimeError("FrozenAudioTower: no sync expert loaded")
        return int(self._arch["net"].get("embed_dim", 128))

    def forward(self, x: Tensor) -> Tensor:
        if self.net is None:
            raise RuntimeError("FrozenAudioTower: no sync expert loaded (build it from the sync_expert asset or load a trained checkpoint)")
        a = x.transpose(1, 2)[:, None]  # [B, 1, C, W]
        a = (a - self.net.audio_mean[None, None, :, None]) / self.net.audio_std[None, None, :, None]
        with torch.no_grad():
            return nn.functional.normalize(self.net.audio(a), dim=1)


class _SyncEncoder(nn.Module):
    """Conv1d (over the feature axis) → LayerNorm → LeakyReLU (Fig. 3)."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.LeakyReLU(0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x[:, None])[:, 0]))


@register("audio_encoder", "sync_enhanced", SyncEnhancedConfig)
class SyncEnhancedEncoder(nn.Module):
    """SyncGaussian's sync-enhanced encoder: ``forward(x [B, W, C])`` → ``a [B, D]``;
    :meth:`forward_pair` → ``(a, a'_ave)`` (``a'_ave`` None without the a_ave branch)."""

    def __init__(self, cfg: SyncEnhancedConfig, *, in_dim: int, window: int, dim: int, ctx: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.hu: AudioWindowEncoder | None = None
        self.ave: FrozenAudioTower | None = None
        if cfg.use_hu:
            self.hu = AudioWindowEncoder(WindowConvConfig(hidden=cfg.hidden), in_dim=_channels(cfg.hu_channels, in_dim, "hu_channels"), window=window, dim=dim)
        if cfg.use_ave:
            c_ave = _channels(cfg.ave_channels, in_dim, "ave_channels")
            loading = ctx is None or ctx.loading
            path = None if loading else ctx.asset("sync_expert", "audio_encoder sync_enhanced")
            self.ave = FrozenAudioTower(path, in_dim=c_ave, window=window)
            # the expert's embedding size is known once it is loaded; a trained head's comes with its state
            self.ave_fc = nn.Sequential(nn.LeakyReLU(0.02), nn.LazyLinear(dim) if self.ave.net is None else nn.Linear(self.ave.dim, dim))
        if cfg.use_hu and cfg.use_ave and cfg.adaptation == "sync":
            self.blocks = nn.ModuleList(_SyncEncoder(dim, cfg.kernel) for _ in range(cfg.blocks))

    def fit(self, audio: Tensor) -> None:
        """Input statistics of a'_hu's encoder (the expert keeps its own)."""
        if self.hu is not None:
            self.hu.fit(_slice(audio, self.cfg.hu_channels))

    def forward_pair(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        single = x.ndim == 2
        if single:
            x = x[None]
        a_hu = self.hu(_slice(x, self.cfg.hu_channels)) if self.hu is not None else None
        a_ave = self.ave_fc(self.ave(_slice(x, self.cfg.ave_channels))) if self.ave is not None else None
        if a_ave is None:
            a = a_hu
        elif a_hu is None:
            a = a_ave
        elif self.cfg.adaptation == "subtract":
            a = a_hu - a_ave
        else:
            a = a_hu
            for block in self.blocks:
                a = block(a - a_ave) * a_ave
        assert a is not None
        target = a_ave if a_hu is not None and self.cfg.tie else None  # w/o a_hu, a is a'_ave: nothing to tie
        if single:
            return a[0], None if target is None else target[0]
        return a, target

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pair(x)[0]
