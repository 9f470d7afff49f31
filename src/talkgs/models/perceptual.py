"""LPIPS (Zhang et al. 2018) with the AlexNet backbone, implemented here (no torchvision).

Two weight files, loaded the real way (no downloads on these machines, no silent fallback):

- the AlexNet backbone in torchvision's format, ``alexnet-owt-7be5be79.pth`` (ImageNet weights
  from ``https://download.pytorch.org/models/alexnet-owt-7be5be79.pth``), looked up at an
  explicit path or in the torch hub cache ``$TORCH_HOME/hub/checkpoints/`` (default
  ``~/.cache/torch/hub/checkpoints/``);
- the linear heads ``weights/v0.1/alex.pth`` shipped inside the ``lpips`` wheel (installed
  with ``--no-deps``; the package itself does not import without torchvision, so its files are
  found with ``importlib.util.find_spec``).

:class:`LPIPS` reproduces ``lpips.LPIPS(net="alex", version="0.1")``: inputs in [-1, 1] (or
[0, 1] with ``normalize=True``), scaling layer, the five ReLU outputs of AlexNet's features,
channel-unit-normalised, squared differences, 1x1 linear heads, spatial mean, sum over layers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "ALEXNET_FILE",
    "AlexNetFeatures",
    "LPIPS",
    "LPIPSWeightsMissing",
    "alexnet_weights_path",
    "lpips_linear_weights_path",
    "torch_hub_checkpoints",
]

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
CHANNELS = (64, 192, 384, 256, 256)


class LPIPSWeightsMissing(FileNotFoundError):
    """A weight file LPIPS needs is not on this machine; the message says where to put it."""


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (``TORCH_HOME`` defaults to ``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def alexnet_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The AlexNet backbone weights: ``path`` if given, else the torch hub cache file.

    Raises:
        LPIPSWeightsMissing: the file does not exist (message: where to put it).
    """
    p = Path(path) if path else torch_hub_checkpoints() / ALEXNET_FILE
    if not p.is_file():
        raise LPIPSWeightsMissing(
            f"LPIPS needs the torchvision AlexNet weights, not found at {p}. Download {ALEXNET_URL} on a machine "
            f"with internet and copy it to {torch_hub_checkpoints() / ALEXNET_FILE} (or set the variant's "
            "losses.lpips.alexnet_weights to its path); or set the lpips loss weight to 0 in the variant/preset."
        )
    return p


def lpips_linear_weights_path(path: str | os.PathLike[str] | None = None, net: str = "alex", version: str = "0.1") -> Path:
    """The LPIPS linear heads: ``path`` if given, else ``weights/v{version}/{net}.pth`` in the lpips wheel."""
    if path:
        p = Path(path)
    else:
        spec = importlib.util.find_spec("lpips")
        if spec is None or not spec.submodule_search_locations:
            raise LPIPSWeightsMissing(
                "LPIPS needs the linear-head weights shipped in the `lpips` wheel, which is not installed: "
                "run `pip install --no-deps lpips==0.1.4` (make setup does), or give the path of alex.pth"
            )
        p = Path(list(spec.submodule_search_locations)[0]) / "weights" / f"v{version}" / f"{net}.pth"
    if not p.is_file():
        raise LPIPSWeightsMissing(f"LPIPS linear-head weights not found at {p}; reinstall `lpips==0.1.4` (--no-deps)")
    return p


class AlexNetFeatures(nn.Module):
    """torchvision ``alexnet().features`` (same layer indices, so its state dict loads as is),
    returning the five ReLU outputs LPIPS compares (``relu1 .. relu5``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=False),  # 1 -> relu1
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(inplace=False),  # 4 -> relu2
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(inplace=False),  # 7 -> relu3
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=False),  # 9 -> relu4
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=False),  # 11 -> relu5
        )
        self._taps = (1, 4, 7, 9, 11)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                outs.append(x)
        return outs

    def load_torchvision(self, path: str | os.PathLike[str]) -> None:
        """Load a torchvision AlexNet checkpoint (``features.*`` keys; the classifier is ignored)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        expected = {k for k in self.state_dict()}
        if set(feats) != expected:
            raise ValueError(
                f"{path}: not a torchvision AlexNet checkpoint (expected keys {sorted(expected)}, "
                f"found {sorted(feats) or sorted(state)[:8]})"
            )
        self.load_state_dict(feats)


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet. Frozen; gradients flow to the inputs only.

    Args:
        alexnet_weights: path of ``alexnet-owt-7be5be79.pth`` (None: torch hub cache).
        linear_weights: path of the linear heads (None: the lpips wheel's ``v0.1/alex.pth``).

    Raises:
        LPIPSWeightsMissing: a weight file is missing (message: where to put it).
    """

    def __init__(self, alexnet_weights: str | os.PathLike[str] | None = None, linear_weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        self.net.load_torchvision(alexnet_weights_path(alexnet_weights))
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS])
        lin_path = lpips_linear_weights_path(linear_weights)
        state = torch.load(lin_path, map_location="cpu", weights_only=True)
        # the wheel's keys: lin{k}.model.1.weight (Dropout at .0, Conv at .1)
        try:
            for k, lin in enumerate(self.lins):
                lin.weight.data.copy_(state[f"lin{k}.model.1.weight"])
        except KeyError as e:
            raise ValueError(f"{lin_path}: not LPIPS alex linear heads (missing {e})") from None
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:  # always eval (no dropout/bn anyway)
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor, *, normalize: bool = False) -> Tensor:
        """LPIPS distance per image: ``x, y [B, 3, H, W]`` → ``[B]``.

        Inputs in [-1, 1], or [0, 1] with ``normalize=True``. Images smaller than ~32 px fail
        in AlexNet's pooling; crops are resized by callers.
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS: expected two [B, 3, H, W] tensors of one shape, found {list(x.shape)} and {list(y.shape)}")
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for a, b, lin in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total
