"""What ``difflens metrics`` accepts, stated once for its help text (and checked against README.md by
``tests/test_help_readme.py``): the metric names, taken from the metric registry, and the input kinds.

Light: the standard library and the registry (:mod:`difflens.metrics.base`), which imports neither numpy
nor torch.
"""

from __future__ import annotations

from difflens.metrics.base import metric_meanings
from difflens.metrics.base import metric_names as registered_names

#: Input kinds of ``--real``/``--fake``: (name, detail). The names are what the help and README.md list.
INPUT_KINDS: tuple[tuple[str, str], ...] = (
    ("image folder", "recursive; {extensions}"),
    (".npy/.npz images", "uint8 (N, H, W, 3)"),
    ("statistics .npz", "mu, sigma; pytorch-fid format; FID only, unless it also holds the features "
                        "(stats build --keep-features)"),
    ("features .npy/.npz", "(N, D), or 'features' in an .npz such as stats build --keep-features writes; "
                           "as --real-features"),
    ("ADM batch .npz", "arr_0 uint8 images; a reference batch's mu, sigma as statistics, mu_s, sigma_s for "
                       "sfid; FILE.npz:arr_0 selects its images"),
    ("clean-fid statistics .npz", "mu, sigma in NAME_MODE_SPLIT_RES.npz; the file name says the protocol"),
    ("hf:NAME[:CONFIG][:SPLIT]", "a Hugging Face dataset"),
    ("parquet", "file, glob or folder"),
    ("arrow folder", "Dataset.save_to_disk"),
    ("metadata folder", "images with metadata.jsonl/metadata.csv; as --fake, its prompts pair with the "
                        "images"),
    ("stats:NAME", "published statistics, see difflens stats list"),
)

#: What the short metric names stand for (the help text's key), from the registry.
METRIC_MEANINGS: dict[str, str] = metric_meanings()


def metric_names() -> tuple[str, ...]:
    """Every built-in ``--metrics`` name: the one registry (:mod:`difflens.metrics.base`), Inception group
    first (``fd-<extractor>`` names registered on first use are left out: the help names the pattern)."""
    from difflens.metrics.base import metric_spec

    return tuple(n for n in registered_names() if not metric_spec(n).options)


def metrics_help() -> str:
    """The ``--metrics`` help text."""
    from difflens.metrics.api import METRICS

    meanings = ", ".join(f"{k} = {v}" for k, v in METRIC_MEANINGS.items())
    return (f"Comma list of: {', '.join(metric_names())} ({meanings}); also fd-EXTRACTOR[:MODEL] for any "
            f"registered extractor (fd-inception, fd-clip:ID, yours). Default: those of "
            f"{', '.join(METRICS)} that the inputs allow (statistics inputs: FID only; IS needs fake "
            "images).")


def inputs_help() -> str:
    """The input kinds of ``--real``/``--fake``, as ``name (detail); ...``."""
    from difflens.metrics.images import IMAGE_EXTENSIONS

    exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    return "; ".join(f"{name} ({detail.format(extensions=exts)})" for name, detail in INPUT_KINDS)
