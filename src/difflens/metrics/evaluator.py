"""The training-loop API: :class:`Evaluator` accumulates metric states from image batches and computes the
record that ``difflens metrics --json`` writes.

::

    ev = Evaluator(metrics=["fid", "kid", "pr"], device="cuda")
    ev.update(real_images, real=True)            # uint8 (N, H, W, 3) numpy or (N, 3, H, W) torch
    for step in training:
        ev.update(generate(...), real=False)
        record = ev.compute()                    # {"metrics": {"fid": {"value": ...}, ...}, ...}
        ev.reset(keep_real=True)                 # the reference statistics stay

Features come from the extractor registry (:mod:`difflens.features.registry`), computed in fixed chunks of
``batch_size`` images per side (the chunks ``difflens metrics`` forms), so the features, and every value,
do not depend on how the images were split into ``update`` calls. Each metric is a mergeable accumulator
(:mod:`difflens.metrics.base`); under ``torch.distributed`` :meth:`Evaluator.compute` gathers every rank's
state (in rank order, :mod:`difflens.distributed` collectives) so every rank gets the single-process value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.base import (
    ComputeContext,
    FeatureBatch,
    Metric,
    create_metric,
    join_state,
    metric_spec,
    resolve_metrics,
    split_state,
)
from difflens.metrics.config import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CMMD_CLIP_MODEL,
    DEFAULT_DINOV2_MODEL,
    MetricsConfig,
)

FORMAT = "difflens-evaluator-state"
STATE_VERSION = 1
_D = MetricsConfig()


class Evaluator:
    """Metrics over image batches (see the module docstring).

    Args:
        metrics: names or aliases from the registry (``fid, kid, is, pr, dc, clip, cmmd, fd-dinov2``).
        device: where the extractors run (``cpu``, ``cuda``, None = auto); images may live anywhere.
        protocol, inception_weights, inception_impl, offline: the Inception extractor (as ``difflens
            metrics``); clip_model, cmmd_clip_model, dinov2_model: the embedding extractors.
        batch_size: images per extractor forward pass (fixed chunks, see the module docstring).
        seed, kid_subset_size, kid_subsets, is_splits, bootstrap: the metric settings (CLI defaults).
        sync_on_compute: under torch.distributed, gather every rank's state in :meth:`compute`.
        extractors: already built extractors by requirement name (``"inception"``, ``"clip:<id>"``...),
            e.g. a user's own registered network; the rest are built from the registry on first use.
    """

    def __init__(self, metrics: str | list[str] | tuple[str, ...] = ("fid", "kid", "is", "pr", "dc"), *,
                 device: str | None = None, protocol: str = _D.protocol,
                 inception_weights: str | Path | None = None, inception_impl: str = _D.inception_impl,
                 clip_model: str = DEFAULT_CLIP_MODEL, cmmd_clip_model: str = DEFAULT_CMMD_CLIP_MODEL,
                 dinov2_model: str = DEFAULT_DINOV2_MODEL, batch_size: int = _D.batch_size,
                 seed: int = _D.seed, kid_subset_size: int = _D.kid_subset_size,
                 kid_subsets: int = _D.kid_subsets, is_splits: int = _D.is_splits,
                 bootstrap: int = _D.bootstrap, offline: bool = False, sync_on_compute: bool = True,
                 extractors: dict[str, Any] | None = None,
                 metric_options: dict[str, dict[str, Any]] | None = None) -> None:
        self.names = resolve_metrics(metrics)
        self.cfg = MetricsConfig(metrics=tuple(n for n in self.names if metric_spec(n).group == "inception"),
                                 protocol=protocol, inception_impl=inception_impl,  # type: ignore[arg-type]
                                 batch_size=batch_size, seed=seed, kid_subset_size=kid_subset_size,
                                 kid_subsets=kid_subsets, is_splits=is_splits, bootstrap=bootstrap)
        self.cfg.validate()
        self.options = {"device": device, "inception_weights": None if inception_weights is None else
                        str(inception_weights), "clip_model": clip_model, "cmmd_clip_model": cmmd_clip_model,
                        "dinov2_model": dinov2_model, "offline": offline}
        self.sync_on_compute = sync_on_compute
        self.metric_options = {k: dict(v) for k, v in (metric_options or {}).items()}
        self.metrics: dict[str, Metric] = {n: create_metric(n, **self._settings(n)) for n in self.names}
        self._extractors: dict[str, Any] = dict(extractors or {})
        self._pending: dict[bool, list[tuple[Any, str | None]]] = {True: [], False: []}
        self._size: tuple[int, int] | None = None
        self.fingerprints: dict[str, dict[str, Any]] = {}
        self._warnings: list[str] = []

    def _settings(self, name: str) -> dict[str, Any]:
        if metric_spec(name).group == "features":  # built as difflens metrics builds it (metrics/route.py)
            from difflens.metrics.frechet import with_run_options

            return with_run_options([name], {name: self.metric_options.get(name, {})},
                                    self.options["inception_weights"], self.cfg.inception_impl, self.cfg.seed,
                                    self.cfg.bootstrap).get(name, {})
        c, o = self.cfg, {"seed": self.cfg.seed}
        extra: dict[str, dict[str, Any]] = {
            "fid": {"bootstrap": c.bootstrap},
            "kid": {"bootstrap": c.bootstrap, "kid_subsets": c.kid_subsets,
                    "kid_subset_size": c.kid_subset_size},
            "is": {"is_splits": c.is_splits},
            "pr": {"bootstrap": c.bootstrap, "k_pr": c.k_pr, "k_dc": c.k_dc},
            "dc": {"bootstrap": c.bootstrap, "k_pr": c.k_pr, "k_dc": c.k_dc},
            "clip": {"bootstrap": c.bootstrap, "clip_model": self.options["clip_model"]},
            "cmmd": {"bootstrap": c.bootstrap, "cmmd_clip_model": self.options["cmmd_clip_model"]},
            "fd-dinov2": {"bootstrap": c.bootstrap, "dinov2_model": self.options["dinov2_model"]}}
        return {**o, **extra.get(name, {})}

    # ------------------------------------------------------------------------------------ extractors

    def _requirements(self, real: bool) -> list[Any]:
        return [r for m in self.metrics.values() for r in m.requirements() if r.wants(real)]

    def _extractor(self, name: str) -> Any:
        """The extractor behind a requirement name, built from the registry on first use."""
        if name not in self._extractors:
            from difflens.features.registry import get_extractor

            o = self.options
            owner = next((m for n, m in self.metrics.items() if metric_spec(n).group == "features"
                          and any(r.extractor == name for r in m.requirements())), None)
            if owner is not None and name != "inception":  # a features-group metric builds its own
                ext = owner.build_extractors(o["device"], bool(o["offline"]))[name]
            elif name == "inception":
                from difflens.features.inception_weights import resolve_inception_weights

                weights = resolve_inception_weights(o["inception_weights"], offline=bool(o["offline"]))
                reg = "inception" if self.cfg.protocol == "tf-legacy" else f"inception-{self.cfg.protocol}"
                ext = get_extractor(reg, weights=weights, device=o["device"], impl=self.cfg.inception_impl)
            else:
                ext = get_extractor(name, device=o["device"], offline=bool(o["offline"]))
            self._extractors[name] = ext
        ext = self._extractors[name]
        if name not in self.fingerprints:
            w = ext.weights.warning() if name == "inception" else None  # random-init weights, as the CLI
            if w and w not in self._warnings:
                self._warnings.append(w)
            self._check_fingerprint(name, self._fingerprint(name, ext))
        return ext

    def _fingerprint(self, name: str, ext: Any) -> dict[str, Any]:
        if name == "inception":
            from difflens.features.base import Fingerprint

            return Fingerprint(protocol=self.cfg.protocol, weights_sha256=ext.weights.sha256).to_dict()
        layer = next(r.layer for m in self.metrics.values() for r in m.requirements() if r.extractor == name)
        return ext.fingerprint(layer).to_dict()

    def _check_fingerprint(self, name: str, fp: dict[str, Any]) -> None:
        from difflens.features.base import mismatches

        saved = self.fingerprints.get(f"saved:{name}")
        if saved is not None and mismatches(saved, fp):
            raise DifflensError(f"the loaded state of extractor {name!r} was made under another protocol "
                                f"({'; '.join(mismatches(saved, fp))}).",
                                "load it with the same protocol and weights options it was saved with")
        self.fingerprints[name] = fp

    # ------------------------------------------------------------------------------------ update

    def update(self, images: Any, real: bool, prompts: list[str] | None = None) -> None:
        """Add a batch: uint8 ``(N, H, W, 3)`` numpy or uint8 ``(N, 3, H, W)`` torch (any device);
        ``prompts``: one per image, needed on the fake side by text metrics (CLIP score)."""
        arr = _as_uint8_nhwc(images)
        needs_prompts = (not real) and any(r.prompts for r in self._requirements(False))
        if needs_prompts and (prompts is None or len(prompts) != len(arr)):
            got = "no prompts" if prompts is None else f"{len(prompts)} prompts"
            raise DifflensError(f"{', '.join(self._prompted_metrics())} need(s) one prompt per generated "
                                f"image: {len(arr)} images, {got}.",
                                "pass update(images, real=False, prompts=[...])")
        names = {r.extractor for r in self._requirements(real)}
        if any(getattr(self._extractor(n), "needs_same_size", False) for n in names):
            size = (int(arr.shape[1]), int(arr.shape[2]))
            if self._size is not None and size != self._size:
                raise DifflensError(f"images of {size[0]}x{size[1]} after {self._size[0]}x{self._size[1]}: "
                                    "this extractor needs one image size.", "resize every image to one size")
            self._size = size
        for i in range(len(arr)):
            prompt = prompts[i] if needs_prompts and prompts is not None else None
            self._pending[real].append((arr[i], prompt))
            if len(self._pending[real]) == self.cfg.batch_size:
                self._flush(real)  # (replaces the pending list)

    def _flush(self, real: bool) -> None:
        import numpy as np

        pending, self._pending[real] = self._pending[real], []
        if not pending:
            return
        reqs = self._requirements(real)
        if not reqs:
            return
        images = [im for im, _ in pending]
        feats: dict[tuple[str, str], Any] = {}
        prompts = [p for _, p in pending] if not real and any(r.prompts for r in reqs) else None
        for name in dict.fromkeys(r.extractor for r in reqs):
            ext = self._extractor(name)
            out = ext(images, prompts=prompts) if getattr(ext, "prompted", False) else ext(images)
            for layer, value in out.items():
                feats[(name, layer)] = np.asarray(value)
        text: dict[tuple[str, str], Any] | None = None
        if prompts is not None:
            text = {}
            for name in {r.extractor for r in reqs if r.prompts
                         and not getattr(self._extractor(r.extractor), "prompted", False)}:
                embeds, truncated = self._extractor(name).encoder.text_features(prompts)
                text[(name, "text_embeds")] = np.asarray(embeds)
                text[(name, "truncated")] = truncated
        batch = FeatureBatch(real, feats, prompts, text)  # type: ignore[arg-type]
        for m in self.metrics.values():
            if any(r.wants(real) for r in m.requirements()):
                m.update(batch)

    def _prompted_metrics(self) -> list[str]:
        return [n for n, m in self.metrics.items() if any(r.prompts for r in m.requirements())]

    def flush(self) -> None:
        """Run the extractors on the images still waiting for a full chunk."""
        for real in (True, False):
            self._flush(real)

    # ------------------------------------------------------------------------------------ merge, reset

    def merge(self, other: Evaluator) -> None:
        """Fold ``other`` (same metrics, settings and extractor fingerprints) into ``self``."""
        if other.names != self.names or other.cfg != self.cfg:
            raise DifflensError(f"cannot merge evaluators of different metrics or settings ({self.names} vs "
                                f"{other.names}).", "merge evaluators built with the same arguments")
        self.flush()
        other.flush()
        mine, theirs = _plain_fingerprints(self.fingerprints), _plain_fingerprints(other.fingerprints)
        for name in set(mine) & set(theirs):
            if mine[name] != theirs[name]:
                raise DifflensError(f"cannot merge evaluators whose {name} extractors differ (weights or "
                                    "protocol).", "use the same weights and protocol in both")
        for name, m in self.metrics.items():
            m.merge(other.metrics[name])
        for k, v in other.fingerprints.items():
            self.fingerprints.setdefault(k, v)

    def reset(self, keep_real: bool = True) -> None:
        """Forget the generated images (and the real ones unless ``keep_real``)."""
        if keep_real:
            self._flush(True)
        self._pending = {True: self._pending[True] if keep_real else [], False: []}
        for m in self.metrics.values():
            m.reset(keep_real=keep_real)

    # ------------------------------------------------------------------------------------ compute

    def _synced(self) -> dict[str, Metric]:
        from difflens.distributed import get_context

        ctx = get_context()
        if not (self.sync_on_compute and ctx.is_distributed):
            return self.metrics
        from difflens.distributed import all_gather_array, all_gather_json

        out: dict[str, Metric] = {}
        for name, m in self.metrics.items():
            arrays, plain = split_state(m.state_dict(), name)
            shapes = all_gather_json({k: list(a.shape) for k, a in arrays.items()}, ctx)
            plains = all_gather_json(plain, ctx)
            flat = {k: all_gather_array(a.reshape(-1), ctx, concat=False) for k, a in sorted(arrays.items())}
            merged: Metric | None = None
            for rank, rank_plain in enumerate(plains):
                part = create_metric(name, **self._settings(name))
                part.load_state_dict(join_state({k: flat[k][rank].reshape(shapes[rank][k]) for k in flat},
                                                rank_plain))
                if merged is None:
                    merged = part
                else:
                    merged.merge(part)
            assert merged is not None
            out[name] = merged
        return out

    def compute(self) -> dict[str, Any]:
        """The ``difflens metrics --json`` record of everything seen so far (every rank under torchrun)."""
        from difflens.metrics.record import finalize, protocol_record
        from difflens.versions import collect_versions

        self.flush()
        inception = tuple(n for n in self.names if metric_spec(n).group == "inception")
        ext = self._extractor("inception") if inception else None  # (a loaded state: built here)
        metrics = self._synced()
        ctx = ComputeContext(chosen=self.names, device=self.options["device"], bootstrap=self.cfg.bootstrap,
                             seed=self.cfg.seed)
        values: dict[str, Any] = {}
        warnings = list(self._warnings)
        for m in metrics.values():
            for key, res in m.compute(ctx).items():
                values[key] = res.to_json()
                warnings.extend(res.warnings)
        embedding = tuple(n for n in self.names if metric_spec(n).group == "embedding")
        fp = self.fingerprints.get("inception") or self.fingerprints.get("saved:inception")
        protocol = (protocol_record(self.cfg, inception, [fp, fp], ext, values) if inception else
                    {"settings": {"metrics": [], "seed": self.cfg.seed, "bootstrap": self.cfg.bootstrap}})
        if embedding:
            protocol["settings"]["metrics"] = [*protocol["settings"]["metrics"], *embedding]
            protocol["embedding"] = {metric_spec(n).keys[0]: self.fingerprints.get(
                next(r.extractor for r in metrics[n].requirements())) for n in embedding}
        featured = tuple(n for n in self.names if metric_spec(n).group == "features")
        if featured:
            protocol["settings"]["metrics"] = [*protocol["settings"]["metrics"], *featured]
            protocol["features"] = {n: {"extractors": {r.extractor: self.fingerprints.get(r.extractor)
                                                       for r in metrics[n].requirements()},
                                        "settings": metrics[n].settings()} for n in featured}
        from difflens.distributed import get_context

        dist = get_context()
        synced = {"distributed": dist.describe()} if self.sync_on_compute and dist.is_distributed else {}
        return finalize({"metrics": values, "n_real": None, "n_fake": None, "protocol": protocol,
                         "versions": collect_versions(), "warnings": warnings, **synced})

    # ------------------------------------------------------------------------------------ save, load

    def save(self, path: str | Path) -> None:
        """Write the state (after running the pending images) to one ``.npz`` (arrays + a JSON header;
        no pickle), atomically. Under torchrun each rank saves its own share."""
        from difflens.atomic import save_npz

        self.flush()
        arrays: dict[str, Any] = {}
        plains: dict[str, Any] = {}
        for name, m in self.metrics.items():
            a, p = split_state(m.state_dict(), name)
            arrays.update({f"{name}/{k}": v for k, v in a.items()})
            plains[name] = p
        header = {"format": FORMAT, "version": STATE_VERSION, "metrics": list(self.names),
                  "config": {k: v for k, v in vars(self.cfg).items() if k != "metrics"},
                  "options": {k: v for k, v in self.options.items() if k != "device"},
                  "fingerprints": {k.removeprefix("saved:"): v for k, v in self.fingerprints.items()},
                  "states": plains}
        import numpy as np

        save_npz(path, __header__=np.asarray(json.dumps(header, sort_keys=True)), **arrays)

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, **options: Any) -> Evaluator:
        """An Evaluator with the state saved by :meth:`save`; ``options`` (e.g. ``inception_weights``)
        must reproduce the saved protocol (checked when the extractor is next built)."""
        import numpy as np

        p = Path(path)
        if not p.is_file():
            raise DifflensError(f"evaluator state {p}: not found.", "pass the file Evaluator.save wrote")
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            header = json.loads(str(data.pop("__header__")))
        except (OSError, ValueError, KeyError) as exc:
            raise DifflensError(f"evaluator state {p} is not readable ({exc}).",
                                "pass the file Evaluator.save wrote") from None
        if header.get("format") != FORMAT or header.get("version") != STATE_VERSION:
            raise DifflensError(f"evaluator state {p} is format {header.get('format')!r} version "
                                f"{header.get('version')!r}; this difflens reads {FORMAT!r} version "
                                f"{STATE_VERSION}.", "recompute the state with this version of difflens")
        cfg = header["config"]
        if options.pop("protocol", cfg["protocol"]) != cfg["protocol"]:
            raise DifflensError(f"evaluator state {p} was made with protocol {cfg['protocol']!r}.",
                                f"load it with protocol={cfg['protocol']!r}")
        saved_opts = {**header["options"], **options}
        ev = cls(header["metrics"], device=device, protocol=cfg["protocol"],
                 inception_impl=cfg["inception_impl"],
                 batch_size=cfg["batch_size"], seed=cfg["seed"], kid_subset_size=cfg["kid_subset_size"],
                 kid_subsets=cfg["kid_subsets"], is_splits=cfg["is_splits"], bootstrap=cfg["bootstrap"],
                 **saved_opts)
        for name, m in ev.metrics.items():
            arrays = {k.split("/", 1)[1]: v for k, v in data.items() if k.split("/", 1)[0] == name}
            m.load_state_dict(join_state(arrays, header["states"][name]))
        ev.fingerprints = {f"saved:{k}": v for k, v in header["fingerprints"].items()}
        return ev


def _plain_fingerprints(fps: dict[str, Any]) -> dict[str, Any]:
    """Extractor fingerprints by name, those of a loaded state included (``saved:<name>``)."""
    return {**{k.removeprefix("saved:"): v for k, v in fps.items() if k.startswith("saved:")},
            **{k: v for k, v in fps.items() if not k.startswith("saved:")}}


def _as_uint8_nhwc(images: Any) -> Any:
    """uint8 (N, H, W, 3) numpy from uint8 (N, H, W, 3) numpy or uint8 (N, 3, H, W) torch (any device)."""
    import numpy as np

    kind = type(images).__module__.split(".")[0]
    if kind == "torch":
        t = images.detach()
        if str(t.dtype) != "torch.uint8":
            raise DifflensError(f"images must be uint8 in [0, 255], got a {t.dtype} tensor.",
                                "convert with (x.clamp(0, 1) * 255).round().to(torch.uint8)")
        if t.ndim != 4 or t.shape[1] != 3:
            hint = ("permute channels-last tensors with x.permute(0, 3, 1, 2)"
                    if t.ndim == 4 and t.shape[-1] == 3
                    else "pass a (N, 3, H, W) batch (add the batch dimension with x[None])")
            raise DifflensError(f"torch images must be (N, 3, H, W), got {tuple(t.shape)}.", hint)
        return t.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise DifflensError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}.",
                            "stack the batch into a uint8 (N, H, W, 3) array")
    if images.dtype != np.uint8:
        raise DifflensError(f"images must be uint8 in [0, 255], got {images.dtype}.",
                            "convert with (x.clip(0, 1) * 255).round().astype(np.uint8)")
    if images.ndim != 4 or images.shape[-1] != 3:
        hint = ("numpy batches are channels-last: transpose with x.transpose(0, 2, 3, 1)"
                if images.ndim == 4 and images.shape[1] == 3
                else "pass a (N, H, W, 3) batch (x[None] for one)")
        raise DifflensError(f"numpy images must be (N, H, W, 3), got {images.shape}.", hint)
    return images
