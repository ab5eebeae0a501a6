"""The example third-party plugin (examples/detkit_example_plugin), installed with pip.

The distribution is installed once for this module with
``pip install --no-deps --no-build-isolation -e`` into a temporary ``--target``
folder that only this test process puts on its path (``site.addsitedir`` runs the
editable install's ``.pth`` the way interpreter startup does for site-packages). The
virtualenv is left untouched: installing into it would make other processes (pytest-xdist
workers started before the install, other test runs) see the entry point but not the
package, and fail to load plugins.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import detkit
from detkit import ConfigError, PluginError
from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.plugins import DISABLE_AUTOLOAD_ENV, load_plugins
from detkit.structures import ImageBatch, Proposals, Targets

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "detkit_example_plugin"
SHAPES_CONFIG = ROOT / "configs" / "shapes_faster_rcnn.yaml"
GRID_OVERRIDE = "model.proposer={name: grid_proposals}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Install the example distribution (editable) and make it visible to this process."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip(f"pip is not installed in {sys.prefix}: cannot install {EXAMPLE} to test it")
    target = tmp_path_factory.mktemp("example_plugin_site")
    cmd = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "--quiet", "--target", str(target), "-e", str(EXAMPLE),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (
        f"`{' '.join(cmd)}` failed (setuptools must be installed for --no-build-isolation):\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
    saved_path = list(sys.path)
    site.addsitedir(str(target))
    importlib.invalidate_caches()
    yield target
    sys.path[:] = saved_path
    for name in [m for m in sys.modules if m.split(".")[0] == "detkit_example_plugin"]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture(autouse=True)
def _autoload_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)


# ----------------------------------------------------------------------------- discovery


def test_entry_point_loads_the_example(installed: Path) -> None:
    from detkit_example_plugin import GridProposer

    plugins = load_plugins()
    info = next((i for i in plugins.infos if i.name == "example"), None)
    assert info is not None, [i.name for i in plugins.infos]
    assert info.module == "detkit_example_plugin"
    assert info.origin.startswith("entry point example = detkit_example_plugin")
    assert "detkit-example-plugin 0.1.0" in info.origin
    component = plugins.registry.get("proposer", "grid_proposals")
    assert component.plugin == "example"
    assert component.factory is GridProposer
    # it adds a proposer and takes nothing away
    assert plugins.registry.get("proposer", "rpn").plugin == "detkit_rpn"


def test_cli_lists_grid_proposals(installed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(
        line.split()[:1] == ["example"] and "detkit-example-plugin 0.1.0" in line for line in lines
    ), out
    assert "grid_proposals (example)" in " ".join(out.split())


def test_autoload_off_hides_the_example(
    installed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    plugins = load_plugins()
    assert "example" not in [i.name for i in plugins.infos]
    assert "grid_proposals" not in plugins.registry.names("proposer")
    config = load_config(SHAPES_CONFIG, [GRID_OVERRIDE])
    with pytest.raises(PluginError, match=r"unknown proposer 'grid_proposals'.*known proposers: rpn"):
        build_detector(config, plugins.registry, num_classes=4)
    assert main(["plugins"]) == 0
    assert "grid_proposals" not in capsys.readouterr().out


def test_block_and_load_by_module_name(installed: Path) -> None:
    assert "grid_proposals" not in load_plugins(["no:example"]).registry.names("proposer")
    # without autoload, -p names the module; the plugin is then named after it
    plugins = load_plugins(["detkit_example_plugin"], autoload=False)
    assert [(i.name, i.origin) for i in plugins.infos][-1] == ("detkit_example_plugin", "-p")
    assert plugins.registry.get("proposer", "grid_proposals").plugin == "detkit_example_plugin"


def test_example_imports_only_public_api() -> None:
    for path in sorted((EXAMPLE / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] != "detkit" or name in detkit.PUBLIC_MODULES, f"{path.name} imports {name}"


# ----------------------------------------------------------------------------- the proposer


def _batch(*sizes: tuple[int, int]) -> ImageBatch:
    hp = max((h for h, _ in sizes), default=1)
    wp = max((w for _, w in sizes), default=1)
    return ImageBatch(torch.zeros(len(sizes), 3, hp, wp), list(sizes), list(sizes))


def test_grid_boxes_by_hand(installed: Path) -> None:
    from detkit_example_plugin import GridProposer

    proposer = GridProposer(scales=[16], stride_fraction=0.5)
    (wide, square), losses = proposer(_batch((20, 24), (16, 16)), None)
    assert losses == {}
    # 20 x 24 image, step 8: columns x = 0, 8 (8 + 16 reaches 24), rows y = 0, 8 (clipped at 20)
    assert wide.boxes.tolist() == [[0, 0, 16, 16], [8, 0, 24, 16], [0, 8, 16, 20], [8, 8, 24, 20]]
    assert wide.objectness.tolist() == [1.0, 0.75, 0.5, 0.25]
    assert square.boxes.tolist() == [[0, 0, 16, 16]]
    assert square.objectness.tolist() == [1.0]
    assert wide.boxes.dtype == torch.float32


def test_grid_scales_in_order_and_even_subsample(installed: Path) -> None:
    from detkit_example_plugin import GridProposer

    # 16 x 16: scale 8, step 4 -> 3 x 3 boxes (indices 0-8, row by row); scale 16 -> 1 box (9)
    full, _ = GridProposer(scales=[8, 16], stride_fraction=0.5)(_batch((16, 16)), None)
    assert len(full[0]) == 10
    assert full[0].boxes[[0, 2, 5, 7, 9]].tolist() == [
        [0, 0, 8, 8], [8, 0, 16, 8], [8, 4, 16, 12], [4, 8, 12, 16], [0, 0, 16, 16],
    ]
    # more than max_proposals = 4: indices i * 10 // 4 = 0, 2, 5, 7 are kept
    kept, _ = GridProposer(scales=[8, 16], stride_fraction=0.5, max_proposals=4)(_batch((16, 16)), None)
    assert kept[0].boxes.tolist() == full[0].boxes[[0, 2, 5, 7]].tolist()
    assert kept[0].objectness.tolist() == [1.0, 0.75, 0.5, 0.25]
    # a box larger than the image is one box, clipped to the whole image
    big, _ = GridProposer(scales=[64])(_batch((20, 24)), None)
    assert big[0].boxes.tolist() == [[0, 0, 24, 20]]


def test_grid_empty_batch_and_training_mode(installed: Path) -> None:
    from detkit_example_plugin import GridProposer

    proposer = GridProposer(scales=[16])
    assert proposer.needs_features is False
    assert list(proposer.parameters()) == []
    assert proposer(_batch(), None) == ([], {})
    proposer.train()
    targets = [Targets(boxes=torch.tensor([[1.0, 1.0, 9.0, 9.0]]), labels=torch.tensor([0]))]
    proposals, losses = proposer(_batch((16, 16)), None, targets)
    assert losses == {}
    assert isinstance(proposals[0], Proposals) and proposals[0].boxes.tolist() == [[0, 0, 16, 16]]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("scales", "[]", "scales must be a non-empty list"),
        ("scales", "[16, -8]", "scales must be a non-empty list"),
        ("stride_fraction", "0", r"stride_fraction must be in \(0, 1\]"),
        ("max_proposals", "0", "max_proposals must be a positive integer"),
        ("scale", "[16]", r"unknown key 'scale' for proposer 'grid_proposals' \(did you mean 'scales'\?\)"),
    ],
)
def test_bad_arguments_are_config_errors(installed: Path, key: str, value: str, message: str) -> None:
    plugins = load_plugins()
    config = load_config(SHAPES_CONFIG, [GRID_OVERRIDE, f"model.proposer.{key}={value}"])
    with pytest.raises(ConfigError, match=message) as info:
        plugins.registry.build("proposer", config["model"]["proposer"], key="model.proposer", in_channels=64)
    assert "config key 'model.proposer'" in str(info.value)


def test_configure_hook_rejects_scales_beyond_the_image(installed: Path) -> None:
    plugins = load_plugins()
    ok = load_config(SHAPES_CONFIG, [GRID_OVERRIDE, "model.proposer.scales=[16, 128]"])
    plugins.hook.detkit_configure(config=ok)
    bad = load_config(SHAPES_CONFIG, [GRID_OVERRIDE, "model.proposer.scales=[16, 256]"])
    with pytest.raises(ConfigError, match=r"model.proposer.scales \[256\] exceed model.preprocess.max_size=128"):
        plugins.hook.detkit_configure(config=bad)


# ----------------------------------------------------------------------------- in a detector


def _images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 128, 112, generator=generator)]


@pytest.fixture(scope="module")
def grid_detector(installed: Path) -> torch.nn.Module:
    from detkit_example_plugin import GridProposer

    config = load_config(SHAPES_CONFIG, [GRID_OVERRIDE])
    assert config["model"]["proposer"] == {"name": "grid_proposals"}
    plugins = load_plugins(autoload=True)
    plugins.hook.detkit_configure(config=config)
    torch.manual_seed(0)
    model = build_detector(config, plugins.registry, num_classes=4)
    assert isinstance(model.proposer, GridProposer)
    return model


def test_detector_inference_uses_grid_proposals(grid_detector: torch.nn.Module) -> None:
    seen: list[tuple[ImageBatch, object, list[Proposals]]] = []
    handle = grid_detector.proposer.register_forward_hook(
        lambda _module, args, output: seen.append((args[0], args[1], output[0]))
    )
    try:
        grid_detector.eval()
        with torch.no_grad():
            detections, losses = grid_detector(_images())
    finally:
        handle.remove()
    assert losses == {}
    (batch, features, proposals), = seen
    assert features is None  # needs_features = False: the detector passes no features
    # defaults: scales 32, 64, 128 at half-box steps on the resized images
    assert batch.image_sizes == [(96, 128), (128, 112)]
    assert [len(p) for p in proposals] == [7 * 5 + 3 * 2 + 1, 7 * 6 + 3 * 3 + 1]
    for p, (h, w) in zip(proposals, batch.image_sizes):
        assert p.boxes[0].tolist() == [0, 0, 32, 32]
        assert float(p.boxes[:, 2].max()) == w and float(p.boxes[:, 3].max()) == h
        assert bool((p.objectness[1:] < p.objectness[:-1]).all())
    assert len(detections) == 2
    for det, (h, w) in zip(detections, [(96, 128), (128, 112)]):
        assert len(det) > 0
        assert bool((det.boxes >= 0).all())
        assert bool((det.boxes[:, 2] <= w).all()) and bool((det.boxes[:, 3] <= h).all())
        assert bool(((det.labels >= 0) & (det.labels < 4)).all())


def test_detector_trains_roi_head_on_grid_proposals(grid_detector: torch.nn.Module) -> None:
    targets = [
        Targets(boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0]]), labels=torch.tensor([1])),
        Targets(boxes=torch.tensor([[30.0, 30.0, 90.0, 100.0], [5.0, 5.0, 25.0, 30.0]]), labels=torch.tensor([3, 0])),
    ]
    grid_detector.train()
    grid_detector.zero_grad()
    _, losses = grid_detector(_images(), targets)
    assert set(losses) == {"loss_roi_cls", "loss_roi_box"}  # the grid proposer adds none
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    head_grads = [p.grad for p in grid_detector.roi_head.parameters() if p.requires_grad]
    assert head_grads and all(g is not None for g in head_grads)
    assert any(float(g.abs().sum()) > 0 for g in head_grads)


def test_example_config_file(installed: Path) -> None:
    config = load_config(EXAMPLE / "configs" / "shapes_grid_proposals.yaml")
    base = load_config(SHAPES_CONFIG)
    assert config["model"]["proposer"] == {
        "name": "grid_proposals", "scales": [16, 32, 64, 128], "stride_fraction": 0.5, "max_proposals": 400,
    }
    assert config["model"]["backbone"] == base["model"]["backbone"]
    plugins = load_plugins()
    plugins.hook.detkit_configure(config=config)
    model = build_detector(config, plugins.registry, num_classes=4)
    assert model.proposer.scales == [16.0, 32.0, 64.0, 128.0] and model.proposer.max_proposals == 400
