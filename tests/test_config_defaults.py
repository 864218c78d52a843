"""Each mode's frozen config is the single source of its defaults: every CLI option default (found by walking
the click commands, so a new option must be classified here), the Python API's keyword defaults and the
tables of ``analysis.toml`` (``analyze.modes.MODE_DEFAULTS``) equal the config's, except where a documented
override says otherwise."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, fields
from typing import Any, get_args, get_type_hints

import pytest
import typer

from difflens.analyze.config import AnalysisConfig
from difflens.attention.config import AttentionConfig, ImageAttentionConfig, WordAgg
from difflens.compare.config import CompareConfig
from difflens.config import DTYPES, RUNTIME, Dtype, RuntimeConfig
from difflens.generate.options import GenerateOptions
from difflens.latent.config import DirectionConfig, EncodeConfig, InterpolateConfig, OodConfig
from difflens.metrics.config import (
    DatasetOptions,
    EmbeddingConfig,
    GenerationRequest,
    MetricsConfig,
    Protocol,
    StatsBuildConfig,
)
from difflens.schedule.config import ScheduleConfig, Spacing

_METRICS, _EMB, _DATA = MetricsConfig(), EmbeddingConfig(), DatasetOptions()
_GEN_REQ = GenerationRequest(model="", num_samples=0)
_ATT = AttentionConfig("", "")

#: Per command: the configs whose fields give its option defaults (first match wins), and renames
#: (option name -> (config, field)).
CONFIGS: dict[str, tuple[list[Any], dict[str, tuple[Any, str]]]] = {
    "metrics": ([_METRICS, _EMB, _DATA, RUNTIME],
                {"steps": (_GEN_REQ, "steps"), "guidance": (_GEN_REQ, "guidance"),
                 "gen_seed": (_GEN_REQ, "seed"), "gen_batch_size": (_GEN_REQ, "batch_size"),
                 "height": (_GEN_REQ, "height"),
                 "width": (_GEN_REQ, "width"), "negative_prompt": (_GEN_REQ, "negative_prompt"),
                 "dtype": (_GEN_REQ, "dtype"), "samples_dir": (_GEN_REQ, "samples_dir")}),
    "generate": ([GenerateOptions(num_samples=1), RUNTIME], {}),
    "compare": ([CompareConfig(), _EMB, RUNTIME], {}),
    "schedule": ([ScheduleConfig()], {}),
    "stats build": ([StatsBuildConfig(), _DATA, _METRICS, RUNTIME], {}),
    "stats fetch": ([RUNTIME], {}),
    "attention": ([_ATT], {"no_image_check": (_ATT, "image_check")}),  # a negated flag, checked below
    "latent encode": ([EncodeConfig(), RUNTIME], {}),
    "latent interpolate": ([InterpolateConfig(), RUNTIME], {"height": (InterpolateConfig(), "size"),
                                                            "width": (InterpolateConfig(), "size")}),
    "latent direction": ([DirectionConfig(), RUNTIME], {"height": (DirectionConfig(), "size"),
                                                        "width": (DirectionConfig(), "size")}),
    "latent ood": ([OodConfig(), RUNTIME], {"method": (OodConfig(), "methods"),
                                            "height": (OodConfig(), "size"), "width": (OodConfig(), "size")}),
    "analyze": ([AnalysisConfig(model="", out="."), RUNTIME], {}),  # type: ignore[arg-type]
}

#: Options that are inputs, outputs or display switches, not settings (no config holds them).
NOT_SETTINGS: dict[str, set[str]] = {
    "": {"version", "verbose"},
    "metrics": {"real", "fake", "real_features", "fake_features", "inception_weights", "json_out",
                "save_stats", "save_real_stats", "save_fake_stats", "model", "prompts", "num_samples",
                "caption_column"},
    "schedule": {"out", "json_out"},
    "compare": {"a", "b", "prompts", "caption_column", "json_out", "report"},
    "stats build": {"keep_features", "inception_weights", "stats_format",
                    "clip_model"},  # None: no CLIP embeddings stored (not the metrics' CLIP model)
    "attention": {"model", "prompt", "out", "image", "noise_level"},
    "attention score": {"out"},
    "report": {"out"},
    "demo": {"out", "modes"},
    "latent encode": {"report", "height", "width", "size"},  # the square side: None is the model's size
    "latent interpolate": {"prompt", "prompt2", "seeds", "images", "inception_weights"},
    "latent ood": {"ood_images", "inception_weights"},
    # analyze: None means "from --config, else the AnalysisConfig default" (checked in the test below)
    "analyze": {"modes", "real", "prompts", "num_samples", "prompt", "config", "seed", "device", "dtype"},
}

#: Options whose CLI default is None because giving them at all means something (``attention --image``
#: refuses generation-only options); None stands for the config default, which the help names.
SENTINELS: dict[str, set[str]] = {"attention": {"steps", "stride"}}


def _commands() -> Iterator[tuple[str, Any]]:
    from difflens.cli import app

    def walk(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}".strip())

    yield from walk(typer.main.get_command(app), "")


def _config_default(path: str, name: str) -> tuple[bool, Any]:
    configs, renames = CONFIGS.get(path, ([], {}))
    if name in renames:
        config, field = renames[name]
        return True, getattr(config, field)
    for config in configs:
        if name in {f.name for f in fields(config)}:
            return True, getattr(config, name)
    return False, None


def test_every_cli_option_default_is_its_config_default() -> None:
    checked, problems = 0, []
    for path, cmd in _commands():
        params = {p.name: p for p in cmd.params}
        stale = (NOT_SETTINGS.get(path, set()) | SENTINELS.get(path, set())) - set(params)
        assert not stale, f"{path}: listed options that do not exist: {sorted(stale)}"
        for name, p in params.items():
            if p.required or name in NOT_SETTINGS.get(path, set()):
                continue
            found, default = _config_default(path, name)
            if not found:
                problems.append(f"difflens {path} --{name.replace('_', '-')}: default {p.default!r} comes "
                                "from no config (add the field to the mode's config, or list it in "
                                "NOT_SETTINGS)")
                continue
            if name in SENTINELS.get(path, set()):
                assert p.default is None and f"default {default})" in (p.help or ""), (path, name, p.help)
            elif name == "no_image_check":
                assert p.default is (not default), (path, name)
            elif p.default != default or type(p.default) is not type(default):
                problems.append(f"difflens {path} --{name}: CLI default {p.default!r} != config {default!r}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 80  # the walk really visited the commands (about 100 options today)


def test_analyze_options_left_out_take_the_analysis_config_defaults() -> None:
    """analyze's run options default to None on the command line; the run then takes the config file's
    value, else AnalysisConfig's, whose runtime fields are RUNTIME's."""
    cfg = AnalysisConfig(model="m", out=".")  # type: ignore[arg-type]
    assert (cfg.seed, cfg.device, cfg.dtype, cfg.offline) == (RUNTIME.seed, RUNTIME.device, RUNTIME.dtype,
                                                              RUNTIME.offline)


def test_analysis_toml_tables_take_the_config_defaults() -> None:
    from difflens.analyze.modes import ANALYZE_OVERRIDES, MODE_DEFAULTS

    sources: dict[str, tuple[list[Any], dict[str, tuple[Any, str]]]] = {
        "metrics": ([_METRICS, _EMB, _GEN_REQ], {}),
        "schedule": ([ScheduleConfig()], {}),
        "attention": ([_ATT], {}),
        "latent": ([InterpolateConfig()], {"ood_methods": (OodConfig(), "methods"),
                                           "ood_noise_levels": (OodConfig(), "noise_levels")}),
    }
    inputs = {"metrics": {"inception_weights", "embedding_metrics"}, "schedule": {"compare"},
              "attention": set(),
              "latent": {"seeds", "inception_weights", "ood_reference", "ood_test", "ood_images"}}
    for mode, table in MODE_DEFAULTS.items():
        configs, renames = sources[mode]
        overrides = ANALYZE_OVERRIDES.get(mode, {})
        for key, value in table.items():
            if key in inputs[mode]:
                continue
            if key in renames:
                config, field = renames[key]
                default = getattr(config, field)
            else:
                owner = next((c for c in configs if key in {f.name for f in fields(c)}), None)
                assert owner is not None, f"[{mode}] {key}: no config field (add one, or list it as an input)"
                default = getattr(owner, key)
            if key in overrides:
                assert value == overrides[key] != default, (mode, key, value, default)  # a real override
            else:
                assert value == default, (mode, key, value, default)


@pytest.mark.parametrize(("func", "configs", "skip"), [
    ("difflens.metrics.api:compute_metrics", [_METRICS], set()),
    ("difflens.metrics.evaluate:evaluate", [_METRICS, _EMB], set()),
    ("difflens.metrics.embedding:compute_embedding_metrics", [_EMB, _METRICS, RUNTIME], set()),
    ("difflens.schedule.api:analyze_schedules", [ScheduleConfig()], set()),
    ("difflens.generate.api:generate", [GenerateOptions(num_samples=1), RUNTIME], set()),
    ("difflens.compare.api:compare", [CompareConfig(), RUNTIME], set()),
    ("difflens.latent.api:encode", [EncodeConfig(), RUNTIME], set()),
    ("difflens.latent.api:interpolate", [InterpolateConfig(), RUNTIME], set()),
    ("difflens.latent.api:direction", [DirectionConfig(), RUNTIME], set()),
    ("difflens.latent.api:ood", [OodConfig(), RUNTIME], set()),
])
def test_python_api_defaults_are_the_config_defaults(func: str, configs: list[Any], skip: set[str]) -> None:
    import importlib

    module, _, name = func.partition(":")
    sig = inspect.signature(getattr(importlib.import_module(module), name))
    compared = 0
    for pname, p in sig.parameters.items():
        if p.default is inspect.Parameter.empty or pname in skip:
            continue
        owner = next((c for c in configs if pname in {f.name for f in fields(c)}), None)
        if owner is None:
            continue  # an input or an output, not a setting
        assert p.default == getattr(owner, pname), (func, pname, p.default, getattr(owner, pname))
        compared += 1
    assert compared >= 3, func


def test_enumerations_are_literals_that_the_code_accepts() -> None:
    """The Literal types are the lists the validators use (one list each)."""
    from difflens.attention.words import WORD_AGGREGATIONS
    from difflens.features.base import PROTOCOLS
    from difflens.preflight import DTYPES as PREFLIGHT_DTYPES
    from difflens.schedule.sources import SPACINGS

    assert get_args(Protocol) == PROTOCOLS
    assert get_args(Spacing) == SPACINGS
    assert get_args(WordAgg) == WORD_AGGREGATIONS
    assert get_args(Dtype) == DTYPES == PREFLIGHT_DTYPES
    for cls in (MetricsConfig, AttentionConfig, ImageAttentionConfig, InterpolateConfig, OodConfig,
                RuntimeConfig):
        hints = get_type_hints(cls)
        assert any("Literal" in str(h) for h in hints.values()), cls
    with pytest.raises(FrozenInstanceError):
        _METRICS.seed = 1  # type: ignore[misc]
