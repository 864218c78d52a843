"""Schedule specs -> diffusers schedulers.

A spec is one of:

- a preset name (``linear``, ``scaled-linear``, ``cosine``, ``zero-snr``, ``sd15``, ``sd21``, ``sdxl``,
  ``sd3``, ``flux``): a scheduler config embedded as JSON under ``difflens/schedule/presets``;
- a ``scheduler_config.json`` file, or a folder holding one;
- a local pipeline folder (its ``scheduler/`` subfolder is used);
- a Hugging Face hub id (``org/name``): its ``scheduler/scheduler_config.json`` is fetched, from the local
  cache only when ``HF_HUB_OFFLINE=1``/``DIFFLENS_OFFLINE=1``.

A spec may end in ``@SchedulerClass`` to swap the sampler class while keeping the model's config, the way
diffusers users write ``EulerDiscreteScheduler.from_config(pipe.scheduler.config)``; ``--scheduler`` does the
same for every spec without its own ``@``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from difflens.errors import DifflensError
from difflens.schedule.config import Spacing

SPACINGS: tuple[str, ...] = get_args(Spacing)

#: Presets and the pipeline class that uses each (pipelines can call set_timesteps differently).
PRESET_PIPELINES: dict[str, str | None] = {
    "linear": None, "scaled-linear": None, "cosine": None, "zero-snr": None,
    "sd15": "StableDiffusionPipeline", "sd21": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ScheduleSource:
    """A resolved spec: the scheduler config to build, and where it came from."""

    spec: str
    label: str
    kind: str  # "preset" | "config" | "pipeline" | "hub"
    config: dict[str, Any]
    class_name: str  # the class that will be built (after any swap)
    original_class: str  # the class named in the config
    location: str | None = None  # file path or hub id the config came from
    pipeline_class: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def list_presets() -> list[str]:
    """Names of the embedded presets."""
    root = resources.files("difflens.schedule").joinpath("presets")
    return sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """The embedded scheduler config of preset ``name``; an unknown name lists the valid ones."""
    presets = list_presets()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        did = f" (did you mean {close[0]!r}?)" if close else ""
        raise DifflensError(f"unknown schedule preset {name!r}{did}; valid presets: {', '.join(presets)}.",
                            "pass a preset name, a scheduler_config.json, a pipeline folder or a hub id")
    text = resources.files("difflens.schedule").joinpath("presets", f"{name}.json").read_text("utf-8")
    return json.loads(text)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DifflensError(f"cannot read scheduler config {path}: {exc}.",
                            "pass a valid scheduler_config.json") from None
    if not isinstance(data, dict) or "_class_name" not in data:
        raise DifflensError(f"{path} is not a diffusers scheduler config (no _class_name).",
                            "pass the scheduler_config.json written by save_pretrained")
    return data


def _pipeline_class(folder: Path) -> str | None:
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    try:
        name = json.loads(index.read_text("utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _from_path(path: Path) -> tuple[dict[str, Any], str, Path, str | None, str]:
    """(config, kind, config file, pipeline class, label) for a local file or folder."""
    if path.is_file():
        folder = path.parent
        pipe_dir = folder.parent if folder.name == "scheduler" else None
        label = (pipe_dir or folder).name or path.stem
        return (_read_config(path), "config", path, _pipeline_class(pipe_dir) if pipe_dir else None, label)
    for cand, kind in ((path / "scheduler" / "scheduler_config.json", "pipeline"),
                       (path / "scheduler_config.json", "config")):
        if cand.is_file():
            pipe_dir = path if kind == "pipeline" else (path.parent if path.name == "scheduler" else None)
            label = (pipe_dir or path).resolve().name
            return _read_config(cand), kind, cand, _pipeline_class(pipe_dir) if pipe_dir else None, label
    raise DifflensError(f"{path} holds no scheduler config (looked for scheduler/scheduler_config.json and "
                        "scheduler_config.json).", "pass a diffusers pipeline folder or a "
                                                   "scheduler_config.json")


def is_offline() -> bool:
    from difflens.models import is_offline as _off

    return _off()


def _hub_file(repo_id: str, filename: str, subfolder: str | None, offline: bool) -> str:
    """Offline-first: the local cache, then (unless offline) the hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, subfolder=subfolder, local_files_only=True)
    except LocalEntryNotFoundError:
        if offline:
            raise
    return hf_hub_download(repo_id, filename, subfolder=subfolder)


def _from_hub(repo_id: str) -> tuple[dict[str, Any], str, str | None]:
    """Fetch the scheduler config of a hub repo: from the cache first, from the hub only when not offline."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = is_offline()
    last: Exception | None = None
    for subfolder in ("scheduler", None):
        try:
            path = _hub_file(repo_id, "scheduler_config.json", subfolder, offline)
        except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
            last = exc
            continue
        except RepositoryNotFoundError:
            raise DifflensError(f"hub repository {repo_id!r} was not found.",
                                "check the id, or pass a local pipeline folder") from None
        except OSError as exc:  # network and HTTP errors are OSError subclasses in huggingface_hub
            last = exc
            break
        pipeline_class = None
        try:
            index = _hub_file(repo_id, "model_index.json", None, offline)
            pipeline_class = json.loads(Path(index).read_text("utf-8")).get("_class_name")
        except (OSError, ValueError, EntryNotFoundError, AttributeError):
            pass
        return _read_config(Path(path)), path, pipeline_class
    where = "in the local cache (offline mode: HF_HUB_OFFLINE/DIFFLENS_OFFLINE is set)" if offline else \
        "in the local cache, and the hub could not be reached"
    detail = str(last).strip().splitlines()[0].rstrip(".") if last is not None and str(last).strip() else ""
    raise DifflensError(f"no scheduler config for {repo_id!r} {where}" + (f": {detail}" if detail else "")
                        + ".",
                        "download it first while online (huggingface-cli download ID --include "
                        "'scheduler/*'), or pass a local pipeline folder")


def scheduler_names() -> list[str]:
    """Scheduler classes exported by diffusers."""
    import diffusers

    return sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))


def resolve_class_name(name: str) -> str:
    """Validate a scheduler class name (exact, or case-insensitive with or without the ``Scheduler``
    suffix)."""
    names = scheduler_names()
    if name in names:
        return name
    key = name.lower().removesuffix("scheduler")
    for n in names:
        if n.lower().removesuffix("scheduler") == key:
            return n
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"one of: {', '.join(names)}"
    raise DifflensError(f"unknown scheduler class {name!r}: diffusers exports no such scheduler.", hint)


def _split_swap(spec: str) -> tuple[str, str | None]:
    if "@" in spec and not Path(spec).expanduser().exists():
        base, _, swap = spec.rpartition("@")
        if base and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", swap):
            return base, swap
    return spec, None


def resolve_spec(spec: str, scheduler: str | None = None) -> ScheduleSource:
    """Resolve one spec (see the module docstring) to its config, without building anything."""
    base, swap = _split_swap(spec)
    swap = swap or scheduler
    path = Path(base).expanduser()
    notes: list[str] = []
    location: str | None
    if path.exists():
        config, kind, cfg_path, pipeline_class, label = _from_path(path)
        location = str(cfg_path)
    elif base in PRESET_PIPELINES or ("/" not in base and "\\" not in base and not base.endswith(".json")):
        config, kind, location, label = load_preset(base), "preset", None, base
        pipeline_class = PRESET_PIPELINES.get(base)
    elif _HUB_ID.match(base) and not base.startswith((".", "/", "~")):
        config, location, pipeline_class = _from_hub(base)
        kind, label = "hub", base
    else:
        raise DifflensError(f"{base!r} does not exist (not a file, folder, preset or hub id).",
                            f"pass a pipeline folder, a scheduler_config.json, a hub id or a preset "
                            f"({', '.join(list_presets())})")
    from difflens.schedule.config_check import check_scheduler_config

    check_scheduler_config(config, location or f"preset {base}")
    original = str(config.get("_class_name"))
    class_name = original
    if swap is not None:
        class_name = resolve_class_name(swap)
        if class_name != original:
            label = f"{label}@{class_name}"
            notes.append(f"sampler swapped: {class_name}.from_config({original} config)")
    return ScheduleSource(spec=spec, label=label, kind=kind, config=dict(config), class_name=class_name,
                          original_class=original, location=location, pipeline_class=pipeline_class,
                          notes=tuple(notes))


def init_params(cls: type) -> set[str]:
    try:
        return set(inspect.signature(cls.__init__).parameters) - {"self"}
    except (TypeError, ValueError):
        return set()


def build_scheduler(source: ScheduleSource, spacing: str | None = None) -> tuple[Any, list[str]]:
    """Instantiate ``source.class_name`` from the source's config (``from_config``), with ``spacing``
    overriding ``timestep_spacing`` where the class has it. Refused classes raise a DifflensError naming
    the reason."""
    import logging

    import diffusers

    from difflens.schedule.adapt import refusal_reason, refuse

    notes: list[str] = []
    if spacing is not None and spacing not in SPACINGS:
        raise DifflensError(f"unknown --spacing {spacing!r}.", f"use one of {', '.join(SPACINGS)}")
    name = source.class_name
    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise DifflensError(f"{source.label}: the config names {name!r}, which diffusers does not export.",
                            "use --scheduler to pick a diffusers scheduler class")
    reason = refusal_reason(name)
    if reason is not None:
        raise refuse(name, reason)
    config = dict(source.config)
    params = init_params(cls)
    if spacing is not None:
        if "timestep_spacing" in params:
            config["timestep_spacing"] = spacing
        else:
            notes.append(f"--spacing {spacing} ignored: {name} has no timestep_spacing")
    unused = sorted(k for k in config if not k.startswith("_") and k not in params)
    if source.class_name != source.original_class and unused:
        notes.append(f"config keys {name} does not use: {', '.join(unused)}")
    dlog = logging.getLogger("diffusers")
    level = dlog.level
    dlog.setLevel(logging.ERROR)  # from_config warns about every unused key; the notes name them instead
    try:
        scheduler = cls.from_config(config)
    except ImportError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "a missing optional dependency"
        raise refuse(name, f"it needs a package that is not installed ({msg})") from None
    except (TypeError, ValueError, NotImplementedError, AttributeError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DifflensError(f"{source.label}: cannot build {name} from its config: {msg}",
                            "fix the scheduler config, or pick another sampler with --scheduler") from None
    finally:
        dlog.setLevel(level)
    return scheduler, notes


def source_from_config(config: dict[str, Any], label: str | None = None,
                       pipeline_class: str | None = None) -> ScheduleSource:
    """A source for an in-memory scheduler config (``_class_name`` names the class)."""
    from difflens.schedule.config_check import check_scheduler_config

    name = str(config.get("_class_name"))
    check_scheduler_config(config, label or name)
    return ScheduleSource(spec=label or name, label=label or name, kind="config", config=dict(config),
                          class_name=name, original_class=name, pipeline_class=pipeline_class)
