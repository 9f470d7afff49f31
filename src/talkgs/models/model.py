"""The trained model of a variant: its head plus its post-render modules.

:class:`TalkingModel` is what checkpoints hold and what training and synthesis render with::

    model = TalkingModel(head, post=[refiner])
    out = model.render(batch, head_options, settings)   # Outputs; out.rgb [K, H, W, 3]

Parameter groups are the head's plus ``post.<name>`` for each post-render module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from talkgs.models.contract import Batch, Head, Outputs, PostModule, RenderSettings

__all__ = ["TalkingModel"]


class TalkingModel(nn.Module):
    """A head and its post-render modules (in order)."""

    def __init__(self, head: Head, post: Sequence[PostModule] = ()) -> None:
        super().__init__()
        self.head = head
        self.post = nn.ModuleDict({m.config.name: m for m in post})

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = dict(self.head.param_groups())
        for m in self.post.values():
            groups[m.group] = list(m.parameters())
        return groups

    def render(self, batch: Batch, options: Any, settings: RenderSettings, post: Sequence[str] | None = None) -> Outputs:
        """The head's render of ``batch`` through the post modules (``post``: which run; None: all)."""
        out = self.head.render(batch, options, settings)
        for name, m in self.post.items():
            if post is None or name in post:
                out = m(out, batch)
        return out

    def prepare(self) -> None:
        """Inference: let the head precompute what does not change between frames."""
        self.head.prepare()

    @property
    def n(self) -> int:
        return self.head.n
