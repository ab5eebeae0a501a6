"""detkit_rpn: the Region Proposal Network of Faster R-CNN (Ren et al., 2015).

Registers the proposer ``rpn``: an anchor generator, a shared conv head that
predicts objectness and box deltas for every anchor, proposal selection
(per-level top-k, NMS, top-k), and its training losses.
"""

from __future__ import annotations

from detkit.hookspecs import Registrar, hookimpl
from detkit_rpn.anchors import AnchorGenerator
from detkit_rpn.head import RPNHead
from detkit_rpn.rpn import RPN

__all__ = ["RPN", "AnchorGenerator", "RPNHead", "detkit_add_components"]


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    registry.register("proposer", "rpn", RPN)
