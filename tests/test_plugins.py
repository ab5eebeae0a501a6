"""The plugin manager: where plugins come from, what they register, how they fail."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import torch

import detkit
import detkit.plugins
import detkit.stages
from detkit import ConfigError, PluginError
from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.engine.build import plugins_for
from detkit.plugins import (
    BUILTIN_PLUGINS,
    COMPONENT_KINDS,
    DISABLE_AUTOLOAD_ENV,
    ENTRY_POINT_GROUP,
    ComponentRegistry,
    PluginInfo,
    load_plugins,
)

#: (kind, name) -> plugin, for every component the built-ins are known to provide.
BUILTIN_COMPONENTS: dict[tuple[str, str], str] = {
    **{("backbone", f"resnet{d}"): "detkit.components" for d in (18, 34, 50, 101, 152)},
    ("neck", "fpn"): "detkit.components",
    ("proposer", "rpn"): "detkit_rpn",
    ("region_extractor", "multiscale_roi_align"): "detkit.components",
    ("roi_head", "fast_rcnn"): "detkit.components",
    ("detector", "two_stage"): "detkit.components",
    ("dataset", "coco"): "detkit.components",
    ("dataset", "voc"): "detkit.components",
    ("dataset", "shapes"): "detkit.components",
    ("importer", "fasterrcnn_resnet50_fpn"): "detkit.components",
}

LOCAL_PLUGIN = """
    import detkit
    from detkit.stages import Proposer


    class {cls}(Proposer):
        def __init__(self, *, in_channels: int = 0, size: int = 1) -> None:
            super().__init__()
            self.in_channels, self.size = in_channels, size


    @detkit.hookimpl
    def detkit_add_components(registry):
        registry.register({kind!r}, {name!r}, {cls})
"""


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the built-ins and their own plugins only, whatever is installed."""
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.setattr(detkit.plugins, "entry_points", lambda group: [])


@pytest.fixture
def make_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``make_plugin(module, kind=..., name=..., source=...)`` writes an importable plugin module."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(module: str, *, kind: str = "proposer", name: str = "local_boxes", source: str | None = None) -> str:
        text = source if source is not None else LOCAL_PLUGIN.format(kind=kind, name=name, cls="Thing")
        (tmp_path / f"{module}.py").write_text(dedent(text), encoding="utf-8")
        made.append(module)
        return module

    yield make
    for module in made:
        sys.modules.pop(module, None)


@dataclass
class FakeDist:
    name: str
    version: str


@dataclass
class FakeEntryPoint:
    """What :func:`importlib.metadata.entry_points` yields: name, value, dist, load()."""

    name: str
    value: str
    plugin: object = None
    error: Exception | None = None
    dist: FakeDist = field(default_factory=lambda: FakeDist("fake-dist", "1.2.3"))
    loads: int = 0

    def load(self) -> object:
        self.loads += 1
        if self.error is not None:
            raise self.error
        return self.plugin


@dataclass
class FakeComponent:
    size: int = 1


class EntryPointPlugin:
    """A plugin object (any object with hook functions will do, not only a module)."""

    @detkit.hookimpl
    def detkit_add_components(self, registry: Any) -> None:
        registry.register("roi_head", "ep_head", FakeComponent)


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[FakeEntryPoint]]:
    def install(*eps: FakeEntryPoint) -> list[FakeEntryPoint]:
        def entry_points(group: str) -> list[FakeEntryPoint]:
            assert group == ENTRY_POINT_GROUP == "detkit"
            return list(eps)

        monkeypatch.setattr(detkit.plugins, "entry_points", entry_points)
        return list(eps)

    return install


def names(infos: list[PluginInfo]) -> list[str]:
    return [info.name for info in infos]


# ----------------------------------------------------------------------------- built-ins


def test_builtins_load_in_listed_order() -> None:
    plugins = load_plugins()
    assert BUILTIN_PLUGINS[:2] == ("detkit.components", "detkit_rpn")
    assert plugins.infos == [PluginInfo(name, name, "builtin") for name in BUILTIN_PLUGINS]


@pytest.mark.parametrize(("kind", "name"), sorted(BUILTIN_COMPONENTS))
def test_builtin_component_registered_by_its_plugin(kind: str, name: str) -> None:
    assert load_plugins().registry.get(kind, name).plugin == BUILTIN_COMPONENTS[(kind, name)]


def test_every_builtin_component_is_attributed_to_a_builtin() -> None:
    plugins = load_plugins()
    components = plugins.registry.components()
    assert {c.plugin for c in components} <= set(BUILTIN_PLUGINS)
    assert {(c.kind, c.name) for c in components} >= set(BUILTIN_COMPONENTS)
    assert all(c.kind in COMPONENT_KINDS for c in components)
    from detkit_rpn import RPN

    assert plugins.registry.get("proposer", "rpn").factory is RPN


def test_scoped_registry_records_the_plugin() -> None:
    import detkit_rpn

    registry = ComponentRegistry()
    scoped = registry.scoped("someone")
    detkit_rpn.detkit_add_components(registry=scoped)
    assert [(c.kind, c.name, c.plugin) for c in registry.components()] == [("proposer", "rpn", "someone")]
    assert scoped.names("proposer") == ["rpn"]
    registry.register("proposer", "direct", object)
    assert registry.get("proposer", "direct").plugin == "<direct>"


# ----------------------------------------------------------------------------- -p and config


def test_p_loads_a_local_module(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_local_p")
    plugins = load_plugins([module])
    assert plugins.infos[-1] == PluginInfo(module, module, "-p")
    assert names(plugins.infos) == [*BUILTIN_PLUGINS, module]
    component = plugins.registry.get("proposer", "local_boxes")
    assert component.plugin == module
    built = plugins.registry.build("proposer", {"name": "local_boxes", "size": 3}, key="model.proposer", in_channels=8)
    assert (built.size, built.in_channels) == (3, 8)


def test_config_plugins_have_origin_config(make_plugin: Callable[..., str], tmp_path: Path) -> None:
    module = make_plugin("detkit_test_local_config", kind="backbone", name="local_backbone")
    plugins = load_plugins(config_plugins=[module])
    assert plugins.infos[-1] == PluginInfo(module, module, "config")
    assert plugins.registry.get("backbone", "local_backbone").plugin == module
    # the same through a config file's `plugins:` key
    path = tmp_path / "c.yaml"
    path.write_text(f"plugins: [{module}]\n", encoding="utf-8")
    from_file = plugins_for(load_config(path))
    assert from_file.infos[-1] == PluginInfo(module, module, "config")


def test_a_plugin_named_twice_loads_once(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_local_twice")
    plugins = load_plugins([module, module], config_plugins=[module])
    assert names(plugins.infos).count(module) == 1
    assert plugins.infos[-1].origin == "-p"  # -p comes before the config's list


def test_p_no_blocks_a_builtin(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_local_block")
    plugins = load_plugins(["no:detkit_rpn", module])
    assert names(plugins.infos) == [*(n for n in BUILTIN_PLUGINS if n != "detkit_rpn"), module]
    known = plugins.registry.names("proposer")
    assert "rpn" not in known and "local_boxes" in known
    with pytest.raises(PluginError) as info:
        plugins.registry.build("proposer", {"name": "rpn"}, key="model.proposer", in_channels=8)
    assert f"unknown proposer 'rpn'; known proposers: {', '.join(known)}. `detkit plugins` lists" in str(info.value)
    # and where a config asks for it
    config = load_config(
        None, ["model.backbone={name: resnet18, width: 8}", "model.neck={name: fpn, out_channels: 16}"]
    )
    with pytest.raises(PluginError, match=r"unknown proposer 'rpn'"):
        build_detector(config, plugins.registry, num_classes=2)


def test_p_no_blocks_a_local_plugin_too(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_local_blocked")
    plugins = load_plugins([module, f"no:{module}"], config_plugins=[module])
    assert module not in names(plugins.infos)
    assert module not in sys.modules  # not even imported


# ----------------------------------------------------------------------------- failures


def test_plugin_failing_to_import_is_named(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_broken", source="raise RuntimeError('no GPU driver here')\n")
    with pytest.raises(PluginError) as info:
        load_plugins([module])
    message = str(info.value)
    assert f"plugin {module!r} (-p) failed to import at " in message  # the plugin's own file and line
    assert f"{module}.py:1: RuntimeError: no GPU driver here" in message
    assert f"-p no:{module}" in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_an_exception_in_registration_names_the_plugin_file_and_line(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_raising", source="""
        import detkit


        @detkit.hookimpl
        def detkit_add_components(registry):
            table = {"a": 1}
            registry.register("proposer", "x", table["b"])
    """)
    with pytest.raises(PluginError) as info:
        load_plugins([module])
    message = str(info.value)
    assert f"plugin {module!r}: detkit_add_components failed at " in message
    assert f"{module}.py:8: KeyError: 'b' (--traceback shows the whole traceback)" in message
    assert isinstance(info.value.__cause__, KeyError)  # chained: --traceback shows the plugin's frames


def test_a_factory_that_cannot_be_called_is_refused_at_registration(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_not_callable", source="""
        import detkit


        @detkit.hookimpl
        def detkit_add_components(registry):
            registry.register("backbone", "mobilenet", "mobilenet_v2")
    """)
    with pytest.raises(PluginError, match=r"registers backbone 'mobilenet' with a factory that cannot be called "
                                          r"\(str 'mobilenet_v2'\)"):
        load_plugins([module])


def test_a_module_without_hook_implementations_is_warned_about(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_no_hooks", source="""
        def detkit_add_components(registry):  # no @detkit.hookimpl: pluggy does not see it
            registry.register("proposer", "never", object)
    """)
    with pytest.warns(UserWarning, match=rf"plugin '{module}' \(-p\) implements no detkit hook.*@detkit.hookimpl"):
        plugins = load_plugins([module])
    assert "never" not in plugins.registry.names("proposer")


def test_reserved_kinds_are_refused():
    registry = ComponentRegistry()
    with pytest.raises(PluginError, match="unknown kind 'preprocess'"):
        registry.register("preprocess", "mine", object, plugin="p")


def test_a_component_that_breaks_its_contract_is_refused_when_built():
    class NotAStage:
        def __init__(self, *, in_channels: int = 0) -> None:
            self.in_channels = in_channels

    class NoChannels(detkit.stages.Backbone):  # a Backbone that forgot out_channels / out_strides
        pass

    registry = ComponentRegistry()
    registry.register("proposer", "plain", NotAStage, plugin="p")
    registry.register("backbone", "bare", NoChannels, plugin="p")
    with pytest.raises(PluginError, match=r"config key 'model.proposer': proposer 'plain' \(plugin 'p', .*NotAStage\) "
                                          r"built a NotAStage, not a detkit.stages.Proposer"):
        registry.build("proposer", {"name": "plain"}, key="model.proposer", in_channels=8)
    with pytest.raises(PluginError, match=r"backbone 'bare' \(plugin 'p'\) has no out_channels mapping"):
        registry.build("backbone", {"name": "bare"}, key="model.backbone")


def test_missing_plugin_module_is_named() -> None:
    with pytest.raises(PluginError, match=r"plugin 'detkit_no_such_plugin' \(config\) failed to import: "
                                          r"ModuleNotFoundError: No module named 'detkit_no_such_plugin'"):
        load_plugins(config_plugins=["detkit_no_such_plugin"])


def test_duplicate_component_names_both_plugins(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_dup_rpn", name="rpn")
    with pytest.raises(PluginError) as info:
        load_plugins([module])
    message = str(info.value)
    assert "proposer 'rpn' is registered by both plugin 'detkit_rpn' and plugin 'detkit_test_dup_rpn'" in message
    assert "-p no:NAME" in message
    # blocking one of the two resolves it
    assert load_plugins([module, "no:detkit_rpn"]).registry.get("proposer", "rpn").plugin == module


def test_duplicate_between_two_local_plugins(make_plugin: Callable[..., str]) -> None:
    first = make_plugin("detkit_test_dup_a", kind="neck", name="same")
    second = make_plugin("detkit_test_dup_b", kind="neck", name="same")
    with pytest.raises(PluginError, match=f"neck 'same' is registered by both plugin '{first}' and plugin '{second}'"):
        load_plugins([first], config_plugins=[second])


def test_unknown_kind_at_registration(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_bad_kind", kind="proposers", name="x")
    with pytest.raises(PluginError) as info:
        load_plugins([module])
    message = str(info.value)
    assert f"plugin {module!r} registers 'x' under unknown kind 'proposers' (did you mean 'proposer'?)" in message
    assert "kinds are: " + ", ".join(COMPONENT_KINDS) in message


def test_unknown_kind_at_lookup() -> None:
    registry = load_plugins().registry
    with pytest.raises(PluginError, match=r"unknown component kind 'backbones' \(did you mean 'backbone'\?\)"):
        registry.get("backbones", "resnet50")


def test_unknown_component_name_suggests_and_lists() -> None:
    registry = load_plugins().registry
    with pytest.raises(PluginError) as info:
        registry.get("backbone", "resnet05")
    message = str(info.value)
    assert "unknown backbone 'resnet05' (did you mean 'resnet50'?)" in message
    assert "known backbones: " + ", ".join(registry.names("backbone")) + "." in message
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(registry.names("backbone"))
    with pytest.raises(PluginError) as info:
        registry.get("neck", "zzz")
    assert "unknown neck 'zzz'; known necks: " in str(info.value)  # nothing close: no suggestion


def test_invalid_hook_signature_is_named(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_bad_hook", source="""
        import detkit


        @detkit.hookimpl
        def detkit_add_components(reg):
            pass
    """)
    with pytest.raises(PluginError, match=f"plugin '{module}' \\(-p\\) has an invalid hook"):
        load_plugins([module])


def test_misspelled_hook_is_an_error(make_plugin: Callable[..., str]) -> None:
    module = make_plugin("detkit_test_typo_hook", source="""
        import detkit


        @detkit.hookimpl
        def detkit_add_component(registry):
            registry.register("proposer", "never", object)
    """)
    with pytest.raises(PluginError, match="detkit_add_component"):
        load_plugins([module])


# ----------------------------------------------------------------------------- entry points


def test_entry_points_are_autoloaded_after_builtins(
    fake_entry_points: Callable[..., list[FakeEntryPoint]], make_plugin: Callable[..., str]
) -> None:
    (ep,) = fake_entry_points(FakeEntryPoint("fancy", "fancy_heads", plugin=EntryPointPlugin()))
    module = make_plugin("detkit_test_after_ep")
    plugins = load_plugins([module])
    assert names(plugins.infos) == [*BUILTIN_PLUGINS, "fancy", module]
    info = plugins.infos[len(BUILTIN_PLUGINS)]
    assert info.origin == "entry point fancy = fancy_heads (fake-dist 1.2.3)"
    assert info.module == "EntryPointPlugin"
    assert plugins.registry.get("roi_head", "ep_head").plugin == "fancy"
    assert ep.loads == 1


def test_failing_entry_point_names_it_and_its_distribution(
    fake_entry_points: Callable[..., list[FakeEntryPoint]],
) -> None:
    fake_entry_points(
        FakeEntryPoint("fancy", "fancy_heads", error=ImportError("cannot import name 'Foo' from 'torch'"))
    )
    with pytest.raises(PluginError) as info:
        load_plugins()
    message = str(info.value)
    assert "plugin 'fancy' from entry point fancy = fancy_heads (fake-dist 1.2.3) failed to import" in message
    assert "ImportError: cannot import name 'Foo' from 'torch'" in message
    assert "uninstall fake-dist 1.2.3" in message
    assert "-p no:fancy" in message and f"{DISABLE_AUTOLOAD_ENV}=1" in message


def test_disable_autoload_skips_entry_points(
    fake_entry_points: Callable[..., list[FakeEntryPoint]], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, good = fake_entry_points(
        FakeEntryPoint("broken", "broken_mod", error=ImportError("boom")),
        FakeEntryPoint("fancy", "fancy_heads", plugin=EntryPointPlugin()),
    )
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    plugins = load_plugins()
    assert names(plugins.infos) == list(BUILTIN_PLUGINS)
    assert broken.loads == good.loads == 0
    # an explicit argument wins over the environment
    with pytest.raises(PluginError, match="'broken'"):
        load_plugins(autoload=True)
    # an empty value does not disable
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "")
    with pytest.raises(PluginError, match="'broken'"):
        load_plugins()


def test_blocked_entry_point_is_not_even_loaded(fake_entry_points: Callable[..., list[FakeEntryPoint]]) -> None:
    broken, good = fake_entry_points(
        FakeEntryPoint("broken", "broken_mod", error=ImportError("boom")),
        FakeEntryPoint("fancy", "fancy_heads", plugin=EntryPointPlugin()),
    )
    plugins = load_plugins(["no:broken"])
    assert names(plugins.infos) == [*BUILTIN_PLUGINS, "fancy"]
    assert broken.loads == 0 and good.loads == 1


def test_entry_point_duplicating_a_builtin(fake_entry_points: Callable[..., list[FakeEntryPoint]]) -> None:
    class Clash:
        @detkit.hookimpl
        def detkit_add_components(self, registry: Any) -> None:
            registry.register("neck", "fpn", FakeComponent)

    fake_entry_points(FakeEntryPoint("clash", "clash_mod", plugin=Clash()))
    with pytest.raises(PluginError) as info:
        load_plugins()
    assert "neck 'fpn' is registered by both plugin 'detkit.components' and plugin 'clash'" in str(info.value)


def test_installed_plugin_also_named_in_config(
    fake_entry_points: Callable[..., list[FakeEntryPoint]], make_plugin: Callable[..., str]
) -> None:
    import importlib

    module = make_plugin("detkit_test_installed_and_named")
    fake_entry_points(FakeEntryPoint("installed", module, plugin=importlib.import_module(module)))
    plugins = load_plugins(config_plugins=[module])
    assert plugins.registry.get("proposer", "local_boxes").plugin == "installed"


# ----------------------------------------------------------------------------- the CLI


def test_cli_lists_plugins_and_components(
    fake_entry_points: Callable[..., list[FakeEntryPoint]],
    make_plugin: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_entry_points(FakeEntryPoint("fancy", "fancy_heads", plugin=EntryPointPlugin()))
    module = make_plugin("detkit_test_cli", kind="neck", name="tiny_neck")
    assert main(["plugins", "-p", module]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    plugin_lines = lines[1 : lines.index("components:")]
    assert lines[0] == "plugins:"
    assert [line.split()[0] for line in plugin_lines] == [*BUILTIN_PLUGINS, "fancy", module]
    assert [line.split(maxsplit=1)[1] for line in plugin_lines] == [
        *["builtin"] * len(BUILTIN_PLUGINS), "entry point fancy = fancy_heads (fake-dist 1.2.3)", "-p",
    ]
    # "  kind:  a (plugin), b (plugin)" lines, wrapped at 100 columns
    listing = " ".join(" ".join(lines[lines.index("components:") + 1 :]).split())
    components = dict(re.findall(r"(\w+): (.*?)(?= \w+: |$)", listing))
    registry = load_plugins([module]).registry
    # every kind with components, in the order of COMPONENT_KINDS; each sorted by name
    assert list(components) == [k for k in COMPONENT_KINDS if registry.names(k)]
    for kind, entries in components.items():
        assert entries == ", ".join(f"{c} ({registry.get(kind, c).plugin})" for c in registry.names(kind))
    assert "rpn (detkit_rpn)" in components["proposer"].split(", ")
    assert {"fpn (detkit.components)", f"tiny_neck ({module})"} <= set(components["neck"].split(", "))
    assert {"ep_head (fancy)", "fast_rcnn (detkit.components)"} <= set(components["roi_head"].split(", "))


def test_cli_prints_plugin_errors_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "-p", "detkit_no_such_plugin"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "detkit: error: plugin 'detkit_no_such_plugin' (-p) failed to import: ModuleNotFoundError"
    )
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_cli_reports_a_failing_entry_point(
    fake_entry_points: Callable[..., list[FakeEntryPoint]], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_entry_points(FakeEntryPoint("broken", "broken_mod", error=SyntaxError("invalid syntax")))
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("detkit: error: plugin 'broken' from entry point broken = broken_mod (fake-dist 1.2.3)")
    assert "Traceback" not in err
    # and the way out the message suggests works
    assert main(["plugins", "-p", "no:broken"]) == 0


def test_build_errors_are_config_errors_not_crashes() -> None:
    registry = load_plugins().registry
    with pytest.raises(ConfigError, match=r"config key 'model.roi_head': unknown key 'num_class' for roi_head "
                                          r"'fast_rcnn' \(did you mean 'num_classes', which detkit sets itself\?\)"):
        registry.build("roi_head", {"name": "fast_rcnn", "num_class": 3}, key="model.roi_head")


# ----------------------------------------------------------------------------- --describe


def test_describe_documents_settings_and_marks_what_detkit_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--describe", "backbone", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("backbone 'resnet18': plugin 'detkit.components', detkit.backbones.resnet.")
    settings = out.split("settings (config keys):")[1]
    assert "  width: int = 64\n      channels of the first stage" in settings  # documented on the ResNet base
    assert "  out_features: Sequence[str] = ('c2', 'c3', 'c4', 'c5')" in settings
    assert "set by detkit" not in out  # a backbone gets nothing from the builder

    assert main(["plugins", "--describe", "roi_head", "fast_rcnn"]) == 0
    out = capsys.readouterr().out
    settings, supplied = out.split("settings (config keys):")[1].split("set by detkit (not in a config):")
    assert "  pooled_size: int = 7\n      side of the pooled features" in settings
    for name in ("region_extractor", "in_channels", "num_classes", "mask_head"):
        assert f"  {name}" in supplied and f"  {name}:" not in settings


def test_describe_unknown_names_suggest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--describe", "backbones", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "unknown component kind 'backbones' (did you mean 'backbone'?); kinds are: backbone" in err
    assert main(["plugins", "--describe", "backbone", "resnet19"]) == 2
    assert "unknown backbone 'resnet19' (did you mean 'resnet18'?)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- checkpoints name their plugins


class SlimNets:
    """An installed plugin (entry point ``slimnets`` of ``detkit-slimnets 0.3.0``) with one backbone."""

    @detkit.hookimpl
    def detkit_add_components(self, registry: Any) -> None:
        registry.register("backbone", "slim_resnet", slim_resnet)


def slim_resnet() -> detkit.stages.Backbone:
    from detkit.backbones.resnet import resnet18

    return resnet18(width=8, norm="bn", frozen_stages=0)


def test_a_checkpoint_names_the_plugin_to_install_when_it_is_missing(
    fake_entry_points: Callable[..., list[FakeEntryPoint]], tmp_path: Path
) -> None:
    from detkit.engine.build import load_model, model_and_components
    from detkit.engine.checkpoint import load_checkpoint, save_checkpoint
    from detkit.importers import CONFIG_DIR

    dist = FakeDist("detkit-slimnets", "0.3.0")
    fake_entry_points(FakeEntryPoint("slimnets", "slimnets", plugin=SlimNets(), dist=dist))
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.backbone={name: slim_resnet}"])
    classes = ["circle", "square", "triangle", "ellipse"]
    model, components = model_and_components(config, load_plugins(), class_names=classes)
    assert components["model.backbone"] == {
        "kind": "backbone", "name": "slim_resnet", "plugin": "slimnets",
        "distribution": "detkit-slimnets", "version": "0.3.0",
    }
    assert components["model.proposer"]["plugin"] == "detkit_rpn"
    assert components["model.type"] == {
        "kind": "detector", "name": "two_stage", "plugin": "detkit.components",
        "distribution": "detkit", "version": detkit.__version__,
    }
    assert "model.mask_head" not in components  # only what the model was built from
    path = save_checkpoint(tmp_path / "best.pt", model=model, config=config, class_names=classes,
                           meta={"components": components})
    assert load_checkpoint(path)["meta"]["components"] == components
    assert load_model(path)[0].class_names == classes  # with the plugin installed

    fake_entry_points()  # the plugin is not installed here
    with pytest.raises(PluginError) as info:
        load_model(path)
    assert str(info.value).startswith(
        f"checkpoint {str(path)!r} was built with backbone 'slim_resnet' (model.backbone) from plugin 'slimnets' "
        "of detkit-slimnets 0.3.0, which is not loaded here; install it (pip install 'detkit-slimnets==0.3.0')"
    )


def test_the_backbone_template_in_plugins_md_builds_a_detector() -> None:
    from detkit.importers import CONFIG_DIR

    text = (Path(__file__).resolve().parents[1] / "docs" / "PLUGINS.md").read_text(encoding="utf-8")
    section = text.split("## 4a. Writing a backbone")[1].split("## 5.")[0]
    source = section.split("```python\n")[1].split("```")[0]
    namespace: dict[str, Any] = {}
    exec(compile(source, "PLUGINS.md", "exec"), namespace)  # the template as the docs print it
    registry = load_plugins().registry
    registry.register("backbone", "mobilenet_v2", namespace["MobileNetV2"], plugin="docs")
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", [
        "model.backbone={name: mobilenet_v2}", "model.region_extractor.in_features=[p3,p4,p5]",
        "model.proposer.anchor_sizes=[[32],[64],[128],[256]]",
    ])
    model = build_detector(config, registry, num_classes=4).eval()
    assert model.backbone.out_strides == {"c3": 8, "c4": 16, "c5": 32}
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 128, 128))
    assert {k: tuple(v.shape[1:]) for k, v in features.maps.items()} == {
        "c3": (32, 16, 16), "c4": (96, 8, 8), "c5": (1280, 4, 4)
    }
    with torch.no_grad():
        detections, _ = model([torch.rand(3, 128, 128)])
    assert len(detections) == 1
