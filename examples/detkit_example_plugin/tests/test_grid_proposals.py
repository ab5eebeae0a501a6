"""Tests of the example plugin, as its author would write them.

Run after ``pip install -e examples/detkit_example_plugin``:
``python -m pytest examples/detkit_example_plugin/tests``.
"""

from __future__ import annotations

import torch
from detkit_example_plugin import GridProposer

from detkit.plugins import load_plugins
from detkit.structures import ImageBatch


def test_registered_by_the_plugin() -> None:
    # load the plugin by module name, as `-p detkit_example_plugin` does, without autoload
    # so that the test does not depend on what else is installed
    plugins = load_plugins(["detkit_example_plugin"], autoload=False)
    component = plugins.registry.get("proposer", "grid_proposals")
    assert component.factory is GridProposer
    assert component.plugin == "detkit_example_plugin"


def test_built_from_a_config_section() -> None:
    plugins = load_plugins(["detkit_example_plugin"], autoload=False)
    spec = {"name": "grid_proposals", "scales": [16], "max_proposals": 3}
    proposer = plugins.registry.build("proposer", spec, key="model.proposer", in_channels=256)
    assert isinstance(proposer, GridProposer)
    assert (proposer.scales, proposer.max_proposals) == ([16.0], 3)


def test_boxes_by_hand() -> None:
    batch = ImageBatch(torch.zeros(1, 3, 20, 24), [(20, 24)], [(20, 24)])
    (proposals,), losses = GridProposer(scales=[16], stride_fraction=0.5)(batch, None)
    assert losses == {}
    assert proposals.boxes.tolist() == [[0, 0, 16, 16], [8, 0, 24, 16], [0, 8, 16, 20], [8, 8, 24, 20]]
    assert proposals.objectness.tolist() == [1.0, 0.75, 0.5, 0.25]
