"""The result record of ``difflens metrics`` (what ``--json`` writes and the Python API returns), built
here and nowhere else. Schema version 1::

    {"schema_version": 1,
     "metrics": {"fid": {"value", "n_real", "n_fake", ["ci95"]},
                 "kid": {"value", "std", "subset_size", "num_subsets", "n_real", "n_fake", ["ci95"]},
                 "is": {"value", "std", "splits", "n_fake"},
                 "precision"|"recall"|"density"|"coverage": {"value", "k", "n_real", "n_fake", ["ci95"]},
                 "clip_score": {"value", "n_fake", ...},
                 "cmmd"|"fd_dinov2": {"value", "n_real", "n_fake", ...}},
     "n_real": N, "n_fake": M,
     "protocol": {"protocol": "tf-legacy"|"clean"|"unknown"|"none", ..., "settings": {...},
                  ["embedding": {metric: {"protocol", "model", "weights_sha256", "preprocessing", "dtype"}}]},
     "versions": {...}, "warnings": [...], ...}

* Every count and setting is the one **used**: ``kid.subset_size``/``num_subsets``, ``is.splits`` and
  ``protocol.settings`` hold the effective values (a warning says when they differ from the request).
* ``n_real``/``n_fake`` per metric say how many samples that metric used; the top-level pair is the count
  every metric agrees on, ``null`` when no metric used that side, the count is unknown (a pytorch-fid
  statistics file) or the metrics disagree (a warning then says so).
* Numbers: ``null`` means undefined (e.g. ``kid.std`` when every subset is the whole set); infinities are
  the strings ``"inf"`` and ``"-inf"``, NaN is ``null``, and each non-finite metric value also gets a
  warning. Valid inputs give finite values: invalid statistics and features are refused up front.
* ``protocol.protocol`` is the Inception resize protocol, ``"unknown"`` for precomputed inputs without a
  fingerprint and ``"none"`` when no Inception metric ran; embedding metrics record theirs under
  ``protocol.embedding``.
"""

from __future__ import annotations

import math
from typing import Any

SCHEMA_VERSION = 1
NO_INCEPTION = "none"


def encode_number(value: Any) -> Any:
    """A float as JSON can hold it: finite floats unchanged, +-inf as ``"inf"``/``"-inf"``, NaN as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _encode(obj: Any, path: str, flagged: list[str]) -> Any:
    if isinstance(obj, dict):
        return {k: _encode(v, f"{path}.{k}" if path else str(k), flagged) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{path}[{i}]", flagged) for i, v in enumerate(obj)]
    if hasattr(obj, "dtype") and getattr(obj, "shape", None) == () and type(obj).__module__ == "numpy":
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        flagged.append(f"{path} is {obj} (recorded as {encode_number(obj)!r}): the inputs make this value "
                       "undefined or unbounded")
        return encode_number(obj)
    return obj


def _agreed_count(result: dict[str, Any], key: str, warnings: list[str]) -> int | None:
    counts = {int(e[key]) for e in result.get("metrics", {}).values() if isinstance(e, dict)
              and isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)}
    own = result.get(key)
    if isinstance(own, int) and own >= 0:
        counts.add(own)
    if len(counts) == 1:
        return counts.pop()
    if len(counts) > 1:
        per = ", ".join(f"{m} {e[key]}" for m, e in result["metrics"].items()
                        if isinstance(e, dict) and e.get(key) is not None)
        note = f"{key} differs between metrics ({per}); the top-level {key} is null, see each metric's"
        if note not in warnings:
            warnings.append(note)
    return None


def finalize(result: dict[str, Any]) -> dict[str, Any]:
    """The result record in its published form (see the module docstring); idempotent."""
    warnings = [str(w) for w in result.get("warnings", [])]
    body = {k: v for k, v in result.items() if k != "schema_version"}
    body["n_real"] = _agreed_count(body, "n_real", warnings)
    body["n_fake"] = _agreed_count(body, "n_fake", warnings)
    protocol = dict(body.get("protocol") or {})
    protocol.setdefault("protocol", NO_INCEPTION)
    body["protocol"] = protocol
    flagged: list[str] = []
    body["metrics"] = _encode(body.get("metrics", {}), "", flagged)
    for note in flagged:
        if note not in warnings:
            warnings.append(note)
    body = {k: (v if k in ("metrics", "warnings") else _encode(v, k, [])) for k, v in body.items()}
    body["warnings"] = warnings
    return {"schema_version": SCHEMA_VERSION, **body}


def settings_record(cfg: Any, chosen: tuple[str, ...], metrics: dict[str, Any]) -> dict[str, Any]:
    """``protocol.settings``: the settings that change the values, as used (KID and IS from their entries)."""
    out: dict[str, Any] = {"metrics": list(chosen), "seed": cfg.seed, "bootstrap": cfg.bootstrap}
    if "kid" in metrics:
        out["kid_subsets"] = metrics["kid"]["num_subsets"]
        out["kid_subset_size"] = metrics["kid"]["subset_size"]
    if "is" in metrics:
        out["is_splits"] = metrics["is"]["splits"]
    if "pr" in chosen:
        out["k_precision_recall"] = cfg.k_pr
    if "dc" in chosen:
        out["k_density_coverage"] = cfg.k_dc
    return out


def protocol_record(cfg: Any, chosen: tuple[str, ...], fingerprints: list[dict[str, Any] | None],
                    extractor: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """``protocol``: the first input's fingerprint, the extractor actually run, and the settings used."""
    from difflens.metrics.fingerprint import PROTOCOL_TEXT
    from difflens.metrics.images import RGB_RULE

    fp = next((f for f in fingerprints if f is not None), None)
    rec: dict[str, Any] = dict(fp) if fp is not None else {
        "protocol": "unknown", "extractor": "unknown (precomputed inputs without a fingerprint)",
        "weights_sha256": None, "feature_layer": None, "dtype": None}
    if extractor is not None:
        w = extractor.weights
        rec["weights_file"] = str(w.path)
        rec["weights_source"] = w.source
        rec["weights_standard"] = w.standard
        rec["weights_random_init"] = w.random_init
        rec["device"] = extractor.device
        rec["batch_size"] = cfg.batch_size
        rec["inception_impl"] = getattr(cfg, "inception_impl", "reference")
        rec["to_rgb"] = RGB_RULE
    if rec.get("protocol") in PROTOCOL_TEXT:
        rec["resize"] = PROTOCOL_TEXT[rec["protocol"]]
    rec["settings"] = settings_record(cfg, chosen, metrics)
    return rec
