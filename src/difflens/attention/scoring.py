"""`difflens attention score`: faithfulness of attention runs against masks (protocol in
:mod:`difflens.attention.faithfulness`).

Each run is an output folder of ``difflens attention`` (generation or ``--image``): ``attention.json`` and
``attention.npz``. Scored views of each word:

* ``all``: the word's map over all steps / noise levels (``word_maps``);
* ``per_step``: each kept step's (or noise level's) word map, from ``per_step`` with the run's own
  token -> word aggregation;
* ``per_layer_group``: when the run kept per-layer maps (``--breakdown``), the mean of its layers' maps per
  group (the layer name's first part, with its index when it has one: ``down_blocks.1``, ``mid_block``,
  ``up_blocks.2``, ``transformer_blocks.3``), over all steps.

Per word (occurrences of a repeated word pooled under the lower-cased word) and overall: mIoU at 0.4 and
over the sweep, pointing accuracy, mean AUROC. Every run and every mask is read and checked before anything
is scored; the JSON is written once, atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.attention.faithfulness import PROTOCOL, MapScore, score_map, summarize
from difflens.errors import DifflensError


@dataclass
class RunMaps:
    """A run's word maps, read back from its output folder."""

    path: Path
    prompt: str
    size: tuple[int, int]                         # image (H, W)
    words: list[str]                              # word labels, in order
    all_steps: dict[str, Any]                     # label -> (h, w)
    per_step: list[tuple[str, dict[str, Any]]]    # (view key, label -> map)
    per_layer_group: dict[str, dict[str, Any]] = field(default_factory=dict)
    step_axis: str = "step"


def layer_group(name: str) -> str:
    """``down_blocks.1.attentions.0...`` -> ``down_blocks.1``; ``mid_block...`` -> ``mid_block``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def _words_of(tokens: Any, groups: list[list[int]], mode: str) -> Any:
    """(..., T, h, w) token maps -> (..., Wd, h, w) word maps, mean or max over each word's tokens."""
    import numpy as np

    reduce = np.mean if mode == "mean" else np.max
    return np.stack([reduce(tokens[..., g, :, :], axis=-3) for g in groups], axis=-3)


def load_run(path: str | Path) -> RunMaps:
    """Read an attention output folder; clear errors for missing or unreadable files."""
    import numpy as np

    run = Path(path).expanduser()
    jpath, npath = run / "attention.json", run / "attention.npz"
    for p in (jpath, npath):
        if not p.is_file():
            raise DifflensError(f"{run} is not an attention run folder (no {p.name}).",
                                "pass folders written by `difflens attention --out DIR`")
    try:
        rec = json.loads(jpath.read_text())
        with np.load(npath) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise DifflensError(f"cannot read run {run}: {exc}",
                            "rerun the attention mode into that folder") from None
    try:
        labels = [w["label"] for w in rec["words"]]
        groups = [list(w["tokens"]) for w in rec["words"]]
        size = (int(rec["height"]), int(rec["width"]))
        mode = rec.get("word_aggregation", "mean")
        word_maps = arrays["word_maps"]
        per_step_tokens = arrays["per_step"]
        step_index = [int(i) for i in rec["per_step_indices"]]
        layer_names = [la["name"] for la in rec["layers"]]
        prompt = rec.get("prompt_tokenized", rec["prompt"])
    except (KeyError, TypeError) as exc:
        raise DifflensError(f"run {run} lacks {exc} in attention.json/attention.npz.",
                            "rerun the attention mode with this difflens version") from None
    if word_maps.shape[0] != len(labels):
        raise DifflensError(f"run {run}: {word_maps.shape[0]} word maps for {len(labels)} words.",
                            "rerun the attention mode into that folder")
    levels = rec.get("noise_levels")
    axis = "noise_level" if levels else "step"
    per_step = []
    if per_step_tokens.shape[0] and labels:
        words_per_step = _words_of(per_step_tokens, groups, mode)
        for k, idx in enumerate(step_index):
            key = f"level {levels[idx]['level']:g}" if levels else f"step {idx}"
            per_step.append((key, dict(zip(labels, words_per_step[k], strict=True))))
    by_group: dict[str, dict[str, Any]] = {}
    if "per_layer" in arrays and labels:
        per_layer = _words_of(arrays["per_layer"], groups, mode)            # (L, Wd, h, w)
        names: dict[str, list[int]] = {}
        for i, n in enumerate(layer_names):
            names.setdefault(layer_group(n), []).append(i)
        for g, idx in names.items():
            by_group[g] = dict(zip(labels, per_layer[idx].mean(axis=0), strict=True))
    return RunMaps(path=run, prompt=prompt, size=size, words=labels,
                   all_steps=dict(zip(labels, word_maps, strict=True)), per_step=per_step,
                   per_layer_group=by_group, step_axis=axis)


@dataclass(frozen=True)
class Pair:
    """One scored (run, word, view)."""

    run: str
    word: str           # label in the run
    view: str           # "all", the per-step key, or "group <name>"
    score: MapScore


def _base(label: str) -> str:
    return label.split("#")[0].lower()


def score_runs(runs: Sequence[str | Path], masks: Sequence[str | Path]) -> dict[str, Any]:
    """Score each run against its masks (one mask source per run, in order) and return the record."""
    from difflens.attention.masks import load_masks
    from difflens.versions import collect_versions

    if not runs:
        raise DifflensError("no run to score.", "pass one or more attention output folders")
    if len(masks) != len(runs):
        raise DifflensError(f"{len(runs)} run(s) but {len(masks)} --masks.",
                            "pass one --masks (folder or shapes:SEED) per run, in the same order")
    loaded = []
    warnings: list[str] = []
    for r, m in zip(runs, masks, strict=True):        # read and check everything before scoring
        run = load_run(r)
        mk = load_masks(m, run.prompt, run.words, run.size)
        for label in [lab for lab, v in mk.items() if not v.any()]:
            warnings.append(f"{run.path}: mask for {label!r} is empty; word excluded from every score")
            del mk[label]
        loaded.append((run, mk, str(m)))
    if not any(mk for _, mk, _ in loaded):
        raise DifflensError("every mask is empty; nothing to score.", "pass masks that mark their words")
    pairs: list[Pair] = []
    run_rows = []
    for run, mk, src in loaded:
        for label, mask in mk.items():
            pairs.append(Pair(str(run.path), label, "all", score_map(run.all_steps[label], mask)))
            for key, maps in run.per_step:
                pairs.append(Pair(str(run.path), label, key, score_map(maps[label], mask)))
            for g, maps in run.per_layer_group.items():
                pairs.append(Pair(str(run.path), label, f"group {g}", score_map(maps[label], mask)))
        run_rows.append({"run": str(run.path), "masks": src, "prompt": run.prompt, "words": sorted(mk),
                         "step_axis": run.step_axis,
                         "layer_groups": sorted(run.per_layer_group)})
    flat = [p for p in pairs if p.view == "all" and p.score.flat]
    if flat:
        warnings.append(f"{len(flat)} map(s) are flat (no variation): counted as predicting nothing")
    all_view = [p for p in pairs if p.view == "all"]
    words = sorted({_base(p.word) for p in all_view})
    step_keys = list(dict.fromkeys(p.view for p in pairs if p.view.startswith(("step ", "level "))))
    group_keys = sorted({p.view for p in pairs if p.view.startswith("group ")})
    return {
        "mode": "attention_score",
        "protocol": PROTOCOL,
        "runs": run_rows,
        "overall": summarize(p.score for p in all_view),
        "per_word": {w: summarize(p.score for p in all_view if _base(p.word) == w) for w in words},
        "per_step": {k: summarize(p.score for p in pairs if p.view == k) for k in step_keys},
        "per_layer_group": {k[len("group "):]: summarize(p.score for p in pairs if p.view == k)
                            for k in group_keys},
        "pairs": [{"run": p.run, "word": p.word, **p.score.to_json()} for p in all_view],
        "warnings": warnings,
        "config": {"runs": [str(r) for r in runs], "masks": [str(m) for m in masks]},
        "versions": collect_versions(),
    }


def write_score(record: dict[str, Any], out: str | Path) -> Path:
    """Write the record as JSON, atomically."""
    from difflens.atomic import write_json

    path = Path(out)
    write_json(path, record)
    return path
