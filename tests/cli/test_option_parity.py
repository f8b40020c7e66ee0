"""One definition of the options: every `edgead train/learn/export` option has its API keyword and back.

The options come from the fields of DetectorConfig, TrainConfig, ReplayConfig and ExportOptions
(edgead.options). This test holds the three consumers together: the CLI commands, the `Detector` methods,
and the dataclasses themselves (every constructor field is declared with `option(...)`, so a new field
cannot be left off the CLI or the API by accident).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import click
import pytest

from edgead.options import names, specs

# CLI options with no API keyword of their own, and why. Everything else must match by name (an inverted flag
# by its field's name: --quiet is progress=False, --no-pretrained is pretrained=False).
CLI_ONLY = {
    "config": "a YAML file of option values; the API takes Python keywords",
    "help": "click's",
    "run": "`edgead export --run RUN`: the API exports the detector's own run (Detector.load(RUN))",
    "bundle": "`edgead export --bundle`: firmware_sim.bundle.make_bundle in Python",
}
# API keywords that are not CLI options, and why.
API_ONLY = {
    "self": "",
}


def _cli(name: str) -> click.Command | None:
    from edgead.cli import _COMMANDS

    if name not in _COMMANDS:
        return None
    module, attr = _COMMANDS[name]
    return getattr(importlib.import_module(module), attr)


def _cli_names(cmd: click.Command, *classes: type) -> set[str]:
    """The API-side names of a command's options: those of `classes`' fields mapped back (--no-pretrained ->
    pretrained, --format -> formats), the others as they are."""
    renamed = {s.param: s.name for c in classes for s in specs(c)}
    out = set()
    for p in cmd.params:
        if not isinstance(p, click.Option):
            continue
        long = next(o[2:].replace("-", "_") for o in p.opts if o.startswith("--"))
        out.add(renamed.get(long, long))
    return out


def _api_names(*methods) -> set[str]:
    out = set()
    for m in methods:
        for p in inspect.signature(m).parameters.values():
            if p.kind is not inspect.Parameter.VAR_KEYWORD:
                out.add(p.name)
    return out


def _option_classes():
    from edgead.export.pipeline import ExportOptions

    from edgead.cl.config import ReplayConfig
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    return DetectorConfig, TrainConfig, ReplayConfig, ExportOptions


def test_every_dataclass_field_is_an_option():
    from edgead.export.fidelity import Tolerance

    for cls in (*_option_classes(), Tolerance):
        plain = [f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("option")]
        assert not plain, (f"{cls.__name__} fields {plain} are not declared with edgead.options.option(...): "
                           "give them a help text so the CLI and the API offer them")
        for s in specs(cls):
            assert s.help.strip(), f"{cls.__name__}.{s.attr}: empty help text"


def test_option_names_are_unique_across_the_train_dataclasses():
    from edgead.cl.config import ReplayConfig
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    all_names = names(DetectorConfig, TrainConfig, ReplayConfig)
    assert len(all_names) == len(set(all_names)), sorted(n for n in all_names if all_names.count(n) > 1)


def test_train_options_match_detector_and_fit():
    from edgead import Detector
    from edgead.cl.config import ReplayConfig
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    cli = _cli_names(_cli("train"), DetectorConfig, TrainConfig, ReplayConfig) - set(CLI_ONLY)
    # Detector(...) takes the model's options, fit(...) the data's and (as **options) every TrainConfig and
    # ReplayConfig field, checked by name in Detector.fit.
    api = _api_names(Detector.__init__, Detector.fit) | set(names(DetectorConfig, TrainConfig, ReplayConfig))
    api -= set(API_ONLY)
    assert not cli - api, f"`edgead train` options with no API keyword: {sorted(cli - api)}"
    assert not api - cli, f"Detector / Detector.fit keywords with no `edgead train` option: {sorted(api - cli)}"


def test_learn_options_match_detector_learn():
    from edgead import Detector

    cmd, method = _cli("learn"), getattr(Detector, "learn", None)
    if cmd is None or method is None:
        pytest.skip("`edgead learn` or Detector.learn does not exist yet")
    # learn continues a run, so the model's and most training options are the run's; the ones it takes must
    # still be the same on both sides (--device is Detector(device=)).
    # `edgead learn --model/--backbone/--image-size/--codec/--strategy` exist only to refuse a value other than
    # the run's with a clear message; a Detector loaded from the run already is that model.
    refused = {"model", "backbone", "image_size", "codec", "strategy"}
    cli = _cli_names(cmd) - set(CLI_ONLY) - {"quiet"} - refused
    api = (_api_names(method) | {"device"}) - set(API_ONLY)
    assert cli == api, f"only `edgead learn`: {sorted(cli - api)}; only Detector.learn: {sorted(api - cli)}"


def test_export_options_match_detector_export():
    from edgead.export.pipeline import ExportOptions

    from edgead import Detector

    cli = _cli_names(_cli("export"), ExportOptions) - set(CLI_ONLY) - {"quiet"}  # the API logs nothing
    api = (_api_names(Detector.export) | set(names(ExportOptions))) - set(API_ONLY)
    api.discard("out")
    cli.discard("out")
    assert cli == api, f"only CLI: {sorted(cli - api)}; only API: {sorted(api - cli)}"


def test_cli_defaults_and_choices_are_the_dataclass_ones():
    from edgead.cli.options import click_option

    for cls in _option_classes():
        for s in specs(cls):
            if not s.cli:
                continue
            (opt,) = click_option(s)(lambda **kw: None).__click_params__
            if s.choices is not None:
                assert tuple(opt.type.choices) == s.choices
            if s.flag or isinstance(s.default, bool) or s.default_text is not None:
                continue
            want = ",".join(map(str, s.default)) if isinstance(s.default, tuple | list) else s.default
            assert opt.default == want, f"--{s.name}: CLI default {opt.default!r}, dataclass {want!r}"


def test_fit_rejects_an_unknown_option_by_name():
    from edgead import Detector
    from edgead.errors import EdgeadError

    with pytest.raises(EdgeadError, match=r"Detector.fit: unknown option epoch \(expected: .*epochs"):
        Detector(image_size=64).fit("nowhere", epoch=3)
    with pytest.raises(EdgeadError, match="Detector.export: unknown option format "):
        Detector(image_size=64).export("x", format="onnx")


def test_benchmark_arguments_take_the_dataclass_definition():
    import argparse

    from edgead.export.pipeline import ExportOptions

    from edgead.cl.config import ReplayConfig
    from edgead.options import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p, ReplayConfig, "latent_crop", "calibration_anchors", "budget")
    add_arguments(p, ExportOptions, "calibration", "io")
    a = p.parse_args([])
    assert (a.latent_crop, a.calibration_anchors, a.budget) == ("auto", 1, None)
    assert (a.calibration, a.io) == (ExportOptions().calibration, "int8")
    a = p.parse_args(["--calibration", "8", "--budget", "500kB", "--calibration-anchors", "0"])
    assert a.calibration == 8 and a.calibration_anchors == 0 and a.budget == "500kB"
    with pytest.raises(SystemExit):
        p.parse_args(["--io", "float"])
