"""LeNet-5, AlexNet, VGG, GoogLeNet (and the registered ResNets) against torchvision and hand computations.

Oracles: torchvision models with random weights saved to a file and loaded with
``weights=`` (same logits, same intermediate maps); torchvision's parameter counts;
a functional re-implementation and a hand count for LeNet-5. Shape sweeps run on
the meta device (shapes only, no arithmetic) to stay fast.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detkit import CheckpointError, ConfigError
from detkit.backbones import FPN, AlexNet, GoogLeNet, GoogLeNetOutputs, LeNet5, build_backbone, list_backbones
from detkit.backbones.vgg import VGG
from detkit.plugins import load_plugins

VGG_NAMES = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
RESNET_NAMES = [f"resnet{d}" for d in (18, 34, 50, 101, 152)]

# Expected trunk stages on a 64x64 input (LeNet-5: 32x32, one channel): name -> (channels, stride, side).
# "Same"-padded nets give side 64 / stride; AlexNet's valid pools and LeNet's valid convs are worked out:
#   AlexNet: conv1 (64 + 2*2 - 11) // 4 + 1 = 15; pool (15 - 3) // 2 + 1 = 7; pool -> 3; pool -> 1.
#   LeNet-5: conv1 32 - 4 = 28; pool 14, conv2 14 - 4 = 10; pool 5.
_SAME = {"c2": 16, "c3": 8, "c4": 4, "c5": 2}
_VGG = {"c2": (256, 4, 16), "c3": (512, 8, 8), "c4": (512, 16, 4), "c5": (512, 32, 2)}
_RESNET_BASIC = {k: (c, 2 ** int(k[1]), _SAME[k]) for k, c in zip(_SAME, (64, 128, 256, 512))}
_RESNET_BOTTLENECK = {k: (c, 2 ** int(k[1]), _SAME[k]) for k, c in zip(_SAME, (256, 512, 1024, 2048))}
EXPECTED_STAGES: dict[str, dict[str, tuple[int, int, int]]] = {
    "lenet5": {"c0": (6, 1, 28), "c1": (16, 2, 10), "c2": (16, 4, 5)},
    "alexnet": {"c2": (64, 4, 15), "c3": (192, 8, 7), "c4": (256, 16, 3), "c5": (256, 32, 1)},
    **{name: _VGG for name in VGG_NAMES},
    "googlenet": {"c2": (192, 4, 16), "c3": (480, 8, 8), "c4": (832, 16, 4), "c5": (1024, 32, 2)},
    "resnet18": _RESNET_BASIC,
    "resnet34": _RESNET_BASIC,
    **{f"resnet{d}": _RESNET_BOTTLENECK for d in (50, 101, 152)},
    "mobilenet_v3_large": {"c2": (24, 4, 16), "c3": (40, 8, 8), "c4": (112, 16, 4), "c5": (960, 32, 2)},
    "mobilenet_v3_small": {"c2": (16, 4, 16), "c3": (24, 8, 8), "c4": (48, 16, 4), "c5": (576, 32, 2)},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small convolutions gain nothing from two, and on a busy
    machine a second thread mostly spins waiting for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input_for(name: str, n: int = 2, device: str = "cpu") -> torch.Tensor:
    shape = (n, 1, 32, 32) if name == "lenet5" else (n, 3, 64, 64)
    return torch.randn(shape, device=device)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _save_state(model: nn.Module, tmp_path, name: str = "weights.pth") -> str:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return str(path)


def _reference_stages_at_pools(features: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision ``features``' maps just before each max pool, and its output."""
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return [features[:i](x) for i in pools if i > 0] + [features(x)]


# -- every registered backbone -------------------------------------------------------------


def test_detkit_registers_exactly_the_expected_backbones():
    components = load_plugins().registry.components()
    ours = {c.name for c in components if c.kind == "backbone" and c.plugin == "detkit.components"}
    assert ours == set(EXPECTED_STAGES)


@pytest.mark.parametrize("name", sorted(EXPECTED_STAGES))
def test_trunk_stages_and_classifier_shapes_of_every_backbone(name):
    list_backbones()  # load plugins outside the meta-device context
    x = _input_for(name, device="meta")
    with torch.device("meta"):
        trunk = build_backbone(name)
        classifier = build_backbone(name, num_classes=7).eval()
    expected = EXPECTED_STAGES[name]
    features = trunk(x)
    assert features.names() == list(expected)
    assert trunk.out_channels == {k: c for k, (c, _, _) in expected.items()}
    assert trunk.out_strides == features.strides == {k: s for k, (_, s, _) in expected.items()}
    for k, (c, _, side) in expected.items():
        assert features[k].shape == (2, c, side, side), k
    assert classifier.classify(x).shape == (2, 7)


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "vgg13_bn", "googlenet", "resnet18"])
def test_out_features_picks_stages(name):
    pick = list(EXPECTED_STAGES[name])[1::2]
    list_backbones()  # load plugins outside the meta-device context
    with torch.device("meta"):
        trunk = build_backbone(name, out_features=pick[::-1])  # any order; returned finest first
        features = trunk(_input_for(name, device="meta"))
    assert features.names() == pick == list(trunk.out_channels) == list(trunk.out_strides)
    with pytest.raises(ConfigError, match=r"unknown .* stages"):
        build_backbone(name, out_features=["c9"])


# -- torchvision weights give torchvision's outputs -------------------------------------------


def _randomize_batch_norms(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics and affine terms, so that loading them is tested."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def vgg16_reference(tmp_path_factory) -> tuple[nn.Module, str]:
    """torchvision's VGG-16 (10 classes, random weights) and its state-dict file, shared: it is big."""
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None, num_classes=10).eval()
    return reference, _save_state(reference, tmp_path_factory.mktemp("vgg16"))


@pytest.fixture(scope="module")
def googlenet_reference(tmp_path_factory) -> tuple[nn.Module, str]:
    """torchvision's GoogLeNet with aux heads (10 classes, random weights, no dropout) and its file."""
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(
        weights=None, num_classes=10, aux_logits=True, init_weights=False, dropout=0.0, dropout_aux=0.0
    )
    reference = _randomize_batch_norms(reference).eval()
    return reference, _save_state(reference, tmp_path_factory.mktemp("googlenet"))


def test_alexnet_loads_torchvision_weights_and_matches_logits_and_stages(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None, num_classes=10).eval()
    path = _save_state(reference, tmp_path)
    ours = AlexNet(num_classes=10, weights=path).eval()
    trunk = AlexNet(weights=path).eval()  # the file's classifier is skipped
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.classify(x), reference(x), atol=1e-4)
        expected = _reference_stages_at_pools(reference.features, x)
        for model in (ours, trunk):
            stages = model(x)
            for name, ref in zip(["c2", "c3", "c4", "c5"], expected, strict=True):
                assert torch.allclose(stages[name], ref, atol=1e-4), name


VGG_STAGES = ["c0", "c1", "c2", "c3", "c4", "c5"]


def test_vgg16_loads_torchvision_weights_and_matches_logits_and_stages(vgg16_reference):
    reference, path = vgg16_reference
    ours = build_backbone("vgg16", num_classes=10, weights=path, out_features=VGG_STAGES).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.classify(x), reference(x), atol=1e-4)
        stages = ours(x)
        for stage, ref in zip(VGG_STAGES, _reference_stages_at_pools(reference.features, x), strict=True):
            assert torch.allclose(stages[stage], ref, atol=1e-4), stage


def test_vgg16_bn_loads_torchvision_weights_and_matches_logits_and_stages(vgg16_reference, tmp_path):
    torch.manual_seed(1)
    # torchvision's VGG-16-BN with random features; its classifier (the same layout as VGG-16's,
    # 120M parameters) is borrowed from the shared VGG-16 rather than initialized again.
    with torch.device("meta"):
        reference = torchvision.models.vgg16_bn(weights=None, num_classes=10, init_weights=False)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    reference.features = _randomize_batch_norms(features)
    reference.classifier = vgg16_reference[0].classifier
    reference.eval()
    path = _save_state(reference, tmp_path)
    ours = build_backbone("vgg16_bn", num_classes=10, weights=path, out_features=VGG_STAGES).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.classify(x), reference(x), atol=1e-4)
        stages = ours(x)
        for stage, ref in zip(VGG_STAGES, _reference_stages_at_pools(reference.features, x), strict=True):
            assert torch.allclose(stages[stage], ref, atol=1e-4), stage


def test_vgg16_trunk_feeds_fpn():
    torch.manual_seed(0)
    backbone = build_backbone("vgg16").eval()
    fpn = FPN(in_channels=backbone.out_channels, in_strides=backbone.out_strides, out_channels=16)
    with torch.no_grad():
        pyramid = fpn(backbone(torch.randn(1, 3, 64, 64)))
    assert pyramid.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert [tuple(pyramid[k].shape) for k in pyramid.names()] == [(1, 16, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]


def test_a_weight_file_must_fit(tmp_path):
    vgg11_trunk = _save_state(build_backbone("vgg11"), tmp_path, "vgg11.pth")
    loaded = build_backbone("vgg11", weights=vgg11_trunk)
    assert torch.equal(loaded.features[0].weight, torch.load(vgg11_trunk)["features.0.weight"])
    with pytest.raises(CheckpointError, match="does not fit"):
        build_backbone("vgg13", weights=vgg11_trunk)
    lenet_trunk = _save_state(LeNet5(), tmp_path, "lenet.pth")
    with pytest.raises(CheckpointError, match="missing"):
        LeNet5(num_classes=10, weights=lenet_trunk)  # a classifier needs its head's weights


def _reference_googlenet_stages(reference: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision GoogLeNet's maps after conv1, conv3, inception3b, inception4e, inception5b."""
    r = reference
    c1 = r.conv1(r._transform_input(x))
    c2 = r.conv3(r.conv2(r.maxpool1(c1)))
    c3 = r.inception3b(r.inception3a(r.maxpool2(c2)))
    c4 = r.maxpool3(c3)
    for block in ("4a", "4b", "4c", "4d", "4e"):
        c4 = getattr(r, f"inception{block}")(c4)
    c5 = r.inception5b(r.inception5a(r.maxpool4(c4)))
    return [c1, c2, c3, c4, c5]


@pytest.mark.parametrize("transform_input", [True, False])
def test_googlenet_loads_torchvision_weights_and_matches_logits_and_stages(transform_input, googlenet_reference):
    reference, path = googlenet_reference
    reference.transform_input = transform_input
    stage_names = ["c1", "c2", "c3", "c4", "c5"]
    ours = GoogLeNet(num_classes=10, transform_input=transform_input, weights=path, out_features=stage_names).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.classify(x), reference(x), atol=1e-4)
        stages = ours(x)
        for name, expected in zip(stage_names, _reference_googlenet_stages(reference, x), strict=True):
            assert torch.allclose(stages[name], expected, atol=1e-4), name
    reference.transform_input = False


def test_googlenet_weights_with_and_without_aux_heads(googlenet_reference, tmp_path):
    reference, file_with_aux = googlenet_reference
    state = torch.load(file_with_aux)
    assert any(k.startswith("aux1.") for k in state)
    file_without_aux = tmp_path / "without_aux.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}, file_without_aux)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        # A file with aux heads into a model without them: the aux weights are skipped.
        model = GoogLeNet(num_classes=10, aux_logits=False, weights=file_with_aux).eval()
        assert model.aux1 is None and torch.allclose(model.classify(x), expected, atol=1e-4)
        # A file without aux heads into a model with them: the heads keep their initialization.
        model = GoogLeNet(num_classes=10, aux_logits=True, weights=str(file_without_aux)).eval()
        assert model.aux1 is not None and torch.allclose(model.classify(x), expected, atol=1e-4)
        # A trunk takes either file.
        trunk = GoogLeNet(weights=file_with_aux).eval()
        assert torch.allclose(trunk(x)["c5"], _reference_googlenet_stages(reference, x)[-1], atol=1e-4)


def test_googlenet_returns_aux_logits_in_training_only_as_torchvision_does(googlenet_reference):
    reference, path = googlenet_reference
    reference = copy.deepcopy(reference).train()  # training updates batch-norm statistics: keep the shared one
    # No dropout (the reference has none either), so that training-mode outputs are comparable.
    ours = GoogLeNet(num_classes=10, weights=path, dropout=0.0, dropout_aux=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([0, 3])
    out, ref = ours.classify(x), reference(x)
    assert isinstance(out, GoogLeNetOutputs)
    for field in ("logits", "aux_logits2", "aux_logits1"):
        assert torch.allclose(getattr(out, field), getattr(ref, field), atol=1e-4), field
    expected_loss = F.cross_entropy(ref.logits, targets) + 0.3 * (
        F.cross_entropy(ref.aux_logits1, targets) + F.cross_entropy(ref.aux_logits2, targets)
    )
    assert torch.allclose(out.loss(targets), expected_loss, atol=1e-4)
    assert ours(x).names() == ["c2", "c3", "c4", "c5"]  # the trunk ignores the aux heads in training too
    with torch.no_grad():
        logits = ours.eval().classify(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    no_aux = GoogLeNet(num_classes=10, aux_logits=False).train().classify(x)
    assert isinstance(no_aux, torch.Tensor) and no_aux.shape == (2, 10)


@pytest.mark.parametrize("depth", [18, 50])
def test_registry_built_resnet_loads_torchvision_weights_and_matches_logits(depth, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10).eval()
    path = _save_state(reference, tmp_path)
    ours = build_backbone(f"resnet{depth}", num_classes=10, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.classify(x), reference(x), atol=1e-4)


# -- parameter counts --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*VGG_NAMES, "alexnet", "googlenet", *RESNET_NAMES])
def test_parameter_count_matches_torchvision(name):
    list_backbones()  # load plugins outside the meta-device context
    options = {"norm": "bn"} if name.startswith("resnet") else {}  # frozen BN holds buffers, not parameters
    tv_options = {"init_weights": True} if name == "googlenet" else {}  # with aux heads, torchvision's default
    with torch.device("meta"):
        ours = build_backbone(name, num_classes=1000, **options)
        theirs = torchvision.models.get_model(name, weights=None, **tv_options)
        trunk = build_backbone(name, **options)
    assert _count(ours) == _count(theirs)
    heads = ("fc", "aux1", "aux2") if name == "googlenet" else ("fc",) if name.startswith("resnet") else ("classifier",)
    head_count = sum(_count(getattr(theirs, h)) for h in heads)
    assert _count(trunk) == _count(theirs) - head_count


def test_lenet5_parameter_count_by_hand():
    # conv1: 6 * (1*5*5) + 6        =    156
    # conv2: 16 * (6*5*5) + 16      =  2,416
    # fc1:   (16*5*5) * 120 + 120   = 48,120
    # fc2:   120 * 84 + 84          = 10,164
    # fc3:   84 * 10 + 10           =    850
    #                          total  61,706
    assert _count(LeNet5(num_classes=10, activation="relu")) == 61_706
    assert _count(LeNet5(num_classes=10, activation="tanh", pool="avg")) == 61_706
    # 3 channels at 28x28 without resizing: conv1 456, conv2 2,416, fc1 16*4*4*120+120 = 30,840, fc2, fc3.
    assert _count(LeNet5(in_channels=3, input_size=28, num_classes=10)) == 456 + 2_416 + 30_840 + 10_164 + 850


# -- LeNet-5 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("activation", "pool"), [("relu", "max"), ("tanh", "avg")])
def test_lenet5_matches_a_functional_reference(activation, pool):
    torch.manual_seed(0)
    model = LeNet5(in_channels=3, num_classes=10, activation=activation, pool=pool).eval()
    act = torch.relu if activation == "relu" else torch.tanh
    pool2 = F.max_pool2d if pool == "max" else F.avg_pool2d
    x = torch.randn(4, 3, 32, 32)
    y = pool2(act(F.conv2d(x, model.conv1.weight, model.conv1.bias)), 2)
    y = pool2(act(F.conv2d(y, model.conv2.weight, model.conv2.bias)), 2)
    y = act(F.linear(y.reshape(4, -1), model.fc1.weight, model.fc1.bias))
    y = act(F.linear(y, model.fc2.weight, model.fc2.bias))
    y = F.linear(y, model.fc3.weight, model.fc3.bias)
    with torch.no_grad():
        assert torch.allclose(model.classify(x), y, atol=1e-5)


def test_lenet5_fits_8x8_digits_by_padding_or_upsampling(tmp_path):
    torch.manual_seed(0)
    native = LeNet5(num_classes=10).eval()
    path = _save_state(native, tmp_path)
    digits = torch.rand(3, 1, 8, 8)
    padded = LeNet5(input_size=8, resize="pad", num_classes=10, weights=path).eval()
    upsampled = LeNet5(input_size=8, resize="upsample", num_classes=10, weights=path).eval()
    with torch.no_grad():
        assert torch.allclose(padded.classify(digits), native.classify(F.pad(digits, (12, 12, 12, 12))), atol=1e-5)
        big = F.interpolate(digits, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(upsampled.classify(digits), native.classify(big), atol=1e-5)
    with pytest.raises(ValueError, match="resize='pad'"):
        LeNet5(input_size=8)
    with pytest.raises(ValueError, match="built for 32x32"):
        native.classify(torch.rand(1, 1, 40, 40))


# -- freezing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "num_classes", "frozen_stages", "frozen", "trainable"),
    [
        ("lenet5", 3, 1, ["conv1"], ["conv2", "fc1"]),
        ("alexnet", None, 2, ["features.0", "features.3"], ["features.6", "features.8"]),
        # vgg11_bn features: 0 conv, 1 bn, 2 relu, 3 pool | 4 conv, 5 bn, 6 relu, 7 pool | 8 conv ...
        ("vgg11_bn", None, 2, ["features.0", "features.1", "features.4", "features.5"], ["features.8", "features.9"]),
        ("googlenet", 3, 2, ["conv1", "conv2", "conv3"], ["inception3a", "fc", "aux1"]),
        # resnet18 stages: c1 conv1, bn1 | c2 maxpool, layer1 | c3 layer2 ...; trainable batch norm
        ("resnet18", 3, 2, ["conv1", "bn1", "layer1"], ["layer2", "fc"]),
    ],
)
def test_frozen_stages_freeze_parameters_and_batch_norm_statistics(name, num_classes, frozen_stages, frozen, trainable):
    torch.manual_seed(0)
    options = {"norm": "bn"} if name.startswith("resnet") else {}
    model = build_backbone(name, num_classes=num_classes, frozen_stages=frozen_stages, **options)  # training mode
    for prefix in frozen:
        assert not any(p.requires_grad for p in model.get_submodule(prefix).parameters()), prefix
    for prefix in trainable:
        assert all(p.requires_grad for p in model.get_submodule(prefix).parameters()), prefix
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for _ in range(2):  # built in training mode, then set to it again
        before = {n: m.running_mean.clone() for n, m in bns.items()}
        x = _input_for(name)
        model.classify(x) if num_classes else model(x)
        for n, m in bns.items():
            is_frozen = any(n == p or n.startswith(p + ".") for p in frozen)
            assert torch.equal(m.running_mean, before[n]) == is_frozen, n
        model.eval().train()
    with pytest.raises(ConfigError, match="frozen_stages must be between 0 and"):
        build_backbone(name, frozen_stages=7)


def test_classify_without_head_is_an_error():
    with pytest.raises(RuntimeError, match="num_classes=None"):
        VGG(depth=11).classify(torch.zeros(1, 3, 32, 32))
