"""The ``datasets`` library at difflens's edge: quiet and offline-aware loading, cache locations, split
choice, and the library's errors turned into one clear message each."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError


@contextlib.contextmanager
def datasets_env(offline: bool) -> Iterator[None]:
    """Quiet ``datasets`` (no progress bars, errors only) and, when ``offline``, forbid hub access; restored
    on exit. The library reads HF_HUB_OFFLINE at import, so the module flags are switched here."""
    import datasets
    import huggingface_hub.constants as hub_constants
    from datasets.utils import logging as ds_logging
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE, ds_logging.get_verbosity(),
             are_progress_bars_disabled())
    if offline:
        datasets.config.HF_HUB_OFFLINE = True
        hub_constants.HF_HUB_OFFLINE = True
    ds_logging.set_verbosity_error()
    disable_progress_bars()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved[0], saved[1]
        ds_logging.set_verbosity(saved[2])
        if not saved[3]:
            enable_progress_bars()


def hf_cache_paths(name: str) -> tuple[Path, Path]:
    """Where ``datasets`` keeps a hub dataset: (prepared Arrow data, raw hub files)."""
    import datasets
    import huggingface_hub.constants as hub_constants
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    prepared = Path(str(datasets.config.HF_DATASETS_CACHE)).expanduser() / "___".join(parts)
    raw = Path(hub_constants.HF_HUB_CACHE).expanduser() / ("datasets--" + name.replace("/", "--"))
    return prepared, raw


def offline_flag(offline: bool) -> bool:
    from difflens.models import is_offline

    return is_offline(offline)


def not_cached(name: str, offline: bool, detail: str) -> DifflensError:
    prepared, raw = hf_cache_paths(name)
    why = "--offline forbids downloading it" if offline else f"the hub could not be reached ({detail})"
    return DifflensError(
        f"dataset {name!r} is not in the local cache and {why}; looked for it in {prepared} "
        f"(HF_DATASETS_CACHE, default $HF_HOME/datasets; raw hub files would be in {raw}).",
        f"run once online: python -c \"import datasets; datasets.load_dataset('{name}')\", "
        "or set HF_DATASETS_CACHE/HF_HOME to the cache that holds it")


def load_builder(name: str, config: str | None, revision: str | None, offline: bool) -> Any:
    """``datasets.load_dataset_builder`` with the library's errors turned into one clear message."""
    from datasets import load_dataset_builder
    from datasets.exceptions import DatasetNotFoundError

    try:
        return load_dataset_builder(name, config, revision=revision)
    except DatasetNotFoundError as exc:
        raise DifflensError(f"dataset {name!r} was not found: {first_line(exc)}",
                            "check the name (owner/name) on huggingface.co/datasets and your access to it") \
            from None
    except ConnectionError as exc:
        raise not_cached(name, offline, first_line(exc)) from None
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if "Couldn't find cache" in msg and "Available configs" not in msg:
            raise not_cached(name, offline, msg) from None
        if "BuilderConfig" in msg or "Config name is missing" in msg or "Available configs" in msg \
                or "config" in msg.lower():
            raise DifflensError(f"dataset {name!r}: config {config!r} is not available ({msg}).",
                                "name one of the available configs: hf:NAME:CONFIG:SPLIT") from None
        raise DifflensError(f"dataset {name!r} could not be loaded: {msg}",
                            "check the dataset spec") from None
    except FileNotFoundError as exc:
        raise DifflensError(f"dataset {name!r} could not be found: {first_line(exc)}",
                            "check the name, or pass a local dataset file") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def builder_splits(builder: Any) -> list[str]:
    splits = getattr(builder.info, "splits", None)
    if splits:
        return list(splits.keys())
    data_files = getattr(builder.config, "data_files", None)
    return list(data_files.keys()) if data_files else []


def pick_split(split: str | None, available: list[str], label: str, example: str) -> str:
    if split is not None:
        if available and split not in available:
            raise DifflensError(f"{label} has no split {split!r}; available splits: {', '.join(available)}.",
                                f"name one of them, e.g. {example}{available[0]}")
        return split
    if len(available) == 1:
        return available[0]
    if not available:
        raise DifflensError(f"{label} lists no split.", "name the split explicitly")
    raise DifflensError(f"{label} has several splits ({', '.join(available)}); the spec must name one.",
                        f"e.g. {example}{available[0]}")


def guarded(items: Iterator[Any], offline: bool) -> Iterator[Any]:
    """Advance ``items`` inside :func:`datasets_env`, one step at a time: the library's global switches are
    never left changed while a consumer holds a suspended generator."""
    while True:
        with datasets_env(offline):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item
