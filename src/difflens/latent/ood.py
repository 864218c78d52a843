"""Out-of-distribution scores for images, three ways, with AUROC / AUPR / FPR@95%TPR.

Every score is "higher = more unusual"; the reference set (in-distribution images) fixes the statistics.

* ``latent-zscore`` (baseline): per-dimension mean m and standard deviation s of the model's normalized
  VAE latents over the reference set (a diagonal Gaussian); score = sqrt(mean_j ((z_j - m_j)/s_j)^2), the
  RMS z-score. Ignores all correlations; shown as the weak baseline it is.
* ``mahalanobis``: pooled features (see :mod:`difflens.latent.features`), a Ledoit-Wolf shrinkage
  covariance (Ledoit & Wolf 2004, ``sklearn.covariance.LedoitWolf``) fitted on the reference features;
  score = sqrt((f - mu)^T S^-1 (f - mu)), the Mahalanobis distance (Lee et al. 2018 use it on deep
  features; shrinkage keeps S invertible when the feature dimension is close to or above the number of
  reference images).
* ``reconstruction`` (Graham et al. 2023, "Denoising diffusion models for out-of-distribution detection",
  CVPRW): each image is noised to several levels and denoised back by the model (the pipeline's img2img
  path with an empty prompt and no guidance; ``strength`` = fraction of the ``steps``-step schedule that is
  re-run); the error at level l is the pixel MSE e_l to the input. Each level's error is z-scored against
  the reference set, z_l = (e_l - mean_ref(e_l)) / std_ref(e_l), and the score is the mean of z_l over the
  levels. (Graham et al. also use LPIPS; MSE keeps this offline-only and dependency-free.)

Evaluation with test images (label 0, in-distribution) and OOD images (label 1, the positive class):
AUROC = ``roc_auc_score``, AUPR = ``average_precision_score``, FPR95 = the smallest false-positive rate at
which the true-positive rate reaches 95%, read from ``roc_curve(drop_intermediate=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from difflens.errors import DifflensError
from difflens.pipeline_call import call_kwargs

METHODS = ("latent-zscore", "mahalanobis", "reconstruction")
MIN_REFERENCE = 10
RECOMMENDED_REFERENCE = 100
DEFAULT_LEVELS = (0.25, 0.5, 0.75)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in items if m not in METHODS]
    if unknown or not items:
        raise DifflensError(f"unknown OOD method(s) {', '.join(unknown) or '(none given)'}.",
                            f"choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(items))


def parse_levels(text: str | Sequence[float], steps: int) -> list[float]:
    """Noise levels as img2img strengths in (0, 1]; each must re-run at least one of ``steps`` steps."""
    raw = text.split(",") if isinstance(text, str) else list(text)
    levels = []
    for item in raw:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            v = float(item)
        except (TypeError, ValueError):
            raise DifflensError(f"--noise-levels: {item!r} is not a number.",
                                "pass strengths in (0, 1], e.g. --noise-levels 0.25,0.5,0.75") from None
        if not 0.0 < v <= 1.0:
            raise DifflensError(f"--noise-levels: {v} is outside (0, 1].", "pass strengths in (0, 1]")
        if int(steps * v) < 1:
            raise DifflensError(f"--noise-levels {v} with --steps {steps} re-runs no denoising step.",
                                f"raise --steps to at least {int(1 / v) + 1} or raise the level")
        levels.append(v)
    if not levels:
        raise DifflensError("--noise-levels is empty.", "pass e.g. --noise-levels 0.25,0.5,0.75")
    return sorted(set(levels))


def check_reference_count(n: int, minimum: int = MIN_REFERENCE) -> str | None:
    """Error below ``minimum`` reference images; a warning text below the recommended 100."""
    if n < minimum:
        raise DifflensError(f"only {n} reference images; OOD statistics need at least {minimum} "
                            f"(and {RECOMMENDED_REFERENCE} or more for stable scores).",
                            f"add in-distribution images to --reference (>= {RECOMMENDED_REFERENCE})")
    if n < RECOMMENDED_REFERENCE:
        return (f"only {n} reference images (fewer than {RECOMMENDED_REFERENCE}): OOD statistics are noisy "
                f"and the scores are not reliable")
    return None


# --- the three scores -------------------------------------------------------------------------------------

@dataclass
class DiagonalGaussian:
    """Per-dimension mean and variance, merged batch by batch (Chan et al. parallel update, float64)."""

    n: int = 0
    mean: Any = None
    m2: Any = None

    def update(self, x: Any) -> DiagonalGaussian:
        import numpy as np

        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        nb, mb = len(x), x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return self
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta ** 2 * self.n * nb / n
        self.n = n
        return self

    @property
    def std(self) -> Any:
        import numpy as np

        return np.sqrt(self.m2 / max(self.n - 1, 1))

    def score(self, x: Any, eps: float = 1e-8) -> Any:
        """RMS z-score per row."""
        import numpy as np

        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        z = (x - self.mean) / np.maximum(self.std, eps)
        return np.sqrt((z ** 2).mean(axis=1))


def latent_zscore_scores(reference_latents: Any, latents: Any) -> Any:
    """Diagonal z-score of latents (N, ...) against the reference latents' per-dimension statistics."""
    return DiagonalGaussian().update(reference_latents).score(latents)


def mahalanobis_scores(reference_features: Any, features: Any) -> Any:
    """Mahalanobis distance under a Ledoit-Wolf covariance fitted on the reference features."""
    import numpy as np
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(reference_features, dtype=np.float64))
    return np.sqrt(np.maximum(lw.mahalanobis(np.asarray(features, dtype=np.float64)), 0.0))


def reconstruction_scores(reference_errors: Any, errors: Any, eps: float = 1e-12) -> Any:
    """Mean over levels of the per-level z-score of the reconstruction error (Graham et al. 2023)."""
    import numpy as np

    ref = np.asarray(reference_errors, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    mu, sd = ref.mean(axis=0), ref.std(axis=0, ddof=1)
    return ((err - mu) / np.maximum(sd, eps)).mean(axis=1)


def ood_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float | None]:
    """AUROC, AUPR (average precision, OOD = positive) and FPR at 95% TPR, via scikit-learn."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    if len(set(y.tolist())) < 2:
        return {"auroc": None, "aupr": None, "fpr95": None}
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    idx = int(np.searchsorted(tpr, 0.95, side="left"))
    return {"auroc": float(roc_auc_score(y, s)), "aupr": float(average_precision_score(y, s)),
            "fpr95": float(fpr[min(idx, len(fpr) - 1)])}


# --- diffusion reconstruction -----------------------------------------------------------------------------

class Reconstructor:
    """Noise images to a level and denoise them back through the model, batch by batch.

    SD 1.x/2.x/XL, SD3 and Flux go through diffusers' img2img pipeline for the family
    (``AutoPipelineForImage2Image.from_pipe``, sharing the loaded components). PixArt has no img2img
    pipeline: its latents are noised with ``scheduler.add_noise`` at the first kept timestep and denoised
    by the text-to-image ``__call__`` over the remaining timesteps (``timesteps=``), which is what img2img
    does. Each image gets the same seeded noise, so its error does not depend on its batch.
    """

    def __init__(self, pipe: Any, settings: Any, steps: int, seed: int = 0) -> None:
        from difflens.latent.vae import pipeline_family

        self.pipe = pipe
        self.family = pipeline_family(pipe)
        self.settings = settings
        self.steps = steps
        self.seed = seed
        self._i2i: Any = None

    def _img2img(self) -> Any:
        if self._i2i is None:
            from diffusers import AutoPipelineForImage2Image

            try:
                self._i2i = AutoPipelineForImage2Image.from_pipe(self.pipe)
            except ValueError as exc:
                raise DifflensError(f"no img2img pipeline for {type(self.pipe).__name__}: {exc}",
                                    "choose --method latent-zscore,mahalanobis") from None
            self._i2i.set_progress_bar_config(disable=True)
        return self._i2i

    def _generators(self, n: int) -> list[Any]:
        import torch

        return [torch.Generator("cpu").manual_seed(self.seed) for _ in range(n)]

    def __call__(self, images: Any, strength: float) -> Any:
        """Reconstructions, [0,1] float (N, 3, H, W) on CPU."""
        import torch

        if self.family == "pixart":
            return self._pixart(images, strength)
        from difflens.latent.generation import sequence_length

        pipe = self._img2img()
        t5 = self.family in ("sd3", "flux")
        kwargs = call_kwargs(pipe, output_type="pt", steps=self.steps,
                             # empty prompt: guidance would change nothing but the cost (Flux: distilled)
                             guidance=None if self.family == "flux" else 1.0,
                             height=images.shape[-2] if t5 else None, width=images.shape[-1] if t5 else None,
                             max_sequence_length=sequence_length(self.pipe, self.settings) if t5 else None,
                             prompt=[""] * len(images), image=images, strength=strength,
                             generator=self._generators(len(images)))
        with torch.no_grad():
            out = pipe(**kwargs).images
        return out.float().cpu()

    def _pixart(self, images: Any, strength: float) -> Any:
        import torch

        from difflens.latent.generation import encode_text, latent_shape, sequence_length
        from difflens.latent.vae import encode_images

        pipe = self.pipe
        sched = pipe.scheduler
        sched.set_timesteps(self.steps)
        ts = sched.timesteps
        keep = min(int(self.steps * strength), self.steps)
        sub = ts[self.steps - keep:]
        z0 = encode_images(pipe, images).to(pipe._execution_device, pipe.dtype)
        size = images.shape[-1]
        noise = torch.cat([torch.randn(latent_shape(pipe, size), generator=g, dtype=pipe.dtype)
                           for g in self._generators(len(images))]).to(z0.device)
        noisy = sched.add_noise(z0, noise, sub[:1].repeat(len(images)).to(z0.device))
        noisy = noisy / sched.init_noise_sigma
        cond = encode_text(pipe, "", self.settings)
        kw = {k: v.repeat(len(images), *([1] * (v.dim() - 1))) for k, v in cond.kwargs().items()}
        try:
            with torch.no_grad():
                out = pipe(**call_kwargs(pipe, output_type="pt", guidance=1.0, height=size, width=size,
                                         max_sequence_length=sequence_length(pipe, self.settings),
                                         keep_size=True, latents=noisy, timesteps=[int(t) for t in sub],
                                         **kw)).images
        except ValueError as exc:
            raise DifflensError(f"reconstruction failed with {type(sched).__name__}: {exc}",
                                "use a scheduler that accepts custom timesteps, or drop the reconstruction "
                                "method") from None
        return out.float().cpu()


def reconstruction_errors(recon: Reconstructor, images: Any, levels: Sequence[float],
                          batch_size: int = 8) -> Any:
    """Pixel MSE between each image and its reconstruction at each level: float64 (N, L)."""
    import numpy as np

    out = np.zeros((len(images), len(levels)), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        for j, level in enumerate(levels):
            rec = recon(batch, level)
            sq = (rec.double() - batch.double()) ** 2
            out[start:start + len(batch), j] = sq.flatten(1).mean(1).numpy()
    return out


# --- the whole scoring run --------------------------------------------------------------------------------

@dataclass
class OodResult:
    methods: list[str]
    n_reference: int
    files: list[str]
    labels: list[int]
    scores: dict[str, Any]            # method -> (N,) scores for files
    reference_scores: dict[str, Any]  # method -> in-sample scores of the reference images
    metrics: dict[str, dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)


def _pass(pipe: Any, files: Sequence[Any], size: int, methods: Sequence[str], features: Any,
          recon: Reconstructor | None, levels: Sequence[float], batch_size: int, what: str
          ) -> dict[str, Any]:
    """One streaming pass over image files: latents (latent-zscore), pooled features (mahalanobis) and
    reconstruction errors, batch by batch, so memory does not grow with the images' pixels."""
    import numpy as np

    from difflens.console import progress
    from difflens.latent.images import iter_image_batches
    from difflens.latent.vae import encode_images

    want_lat, want_feat = "latent-zscore" in methods, "mahalanobis" in methods
    same_pass = want_feat and getattr(features, "name", None) == "vae"
    lat, feat, err = [], [], []
    for batch in progress(iter_image_batches(files, size, batch_size, what), total=len(files),
                          description=what):
        if want_lat or same_pass:
            out = encode_images(pipe, batch, batch_size=batch_size, with_features=same_pass)
            z, f = out if same_pass else (out, None)
            if want_lat:
                lat.append(z.numpy().reshape(len(batch), -1))
            if same_pass:
                feat.append(f)
        if want_feat and not same_pass:
            feat.append(features(batch))
        if recon is not None:
            err.append(reconstruction_errors(recon, batch, levels, batch_size=batch_size))
    return {"latents": np.concatenate(lat) if lat else None,
            "features": np.concatenate(feat) if feat else None,
            "errors": np.concatenate(err) if err else None}


def score_images(pipe: Any, reference: Sequence[Any], evaluated: Sequence[Any], labels: Sequence[int],
                 methods: Sequence[str], features: Any, levels: Sequence[float], steps: int, seed: int,
                 settings: Any, batch_size: int = 8) -> OodResult:
    """Score the ``evaluated`` image files against the ``reference`` image files by each method (images
    resized to ``settings.size`` by :mod:`difflens.latent.images`' rule)."""
    import numpy as np

    recon = Reconstructor(pipe, settings, steps=steps, seed=seed) if "reconstruction" in methods else None
    ref = _pass(pipe, reference, settings.size, methods, features, recon, levels, batch_size, "reference")
    ev = _pass(pipe, evaluated, settings.size, methods, features, recon, levels, batch_size, "scoring")
    scores: dict[str, Any] = {}
    ref_scores: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if "latent-zscore" in methods:
        gauss = DiagonalGaussian().update(ref["latents"])
        scores["latent-zscore"] = gauss.score(ev["latents"])
        ref_scores["latent-zscore"] = gauss.score(ref["latents"])
        details["latent-zscore"] = {"latent_dims": int(ref["latents"].shape[1])}
    if "mahalanobis" in methods:
        scores["mahalanobis"] = mahalanobis_scores(ref["features"], ev["features"])
        ref_scores["mahalanobis"] = mahalanobis_scores(ref["features"], ref["features"])
        details["mahalanobis"] = {"feature_space": features.describe(),
                                  "feature_dims": int(ref["features"].shape[1]),
                                  "covariance": "Ledoit-Wolf shrinkage (sklearn)"}
    if "reconstruction" in methods:
        scores["reconstruction"] = reconstruction_scores(ref["errors"], ev["errors"])
        ref_scores["reconstruction"] = reconstruction_scores(ref["errors"], ref["errors"])
        details["reconstruction"] = {
            "noise_levels": list(levels), "steps": steps, "seed": seed, "error": "pixel MSE in [0,1]",
            "reference_error_mean": ref["errors"].mean(axis=0).tolist(),
            "reference_error_std": ref["errors"].std(axis=0, ddof=1).tolist(),
        }
    metrics = {m: ood_metrics(labels, scores[m]) for m in methods} if 1 in labels else {}
    return OodResult(list(methods), len(reference), [str(f) for f in evaluated], list(labels),
                     {m: np.asarray(v) for m, v in scores.items()}, ref_scores, metrics, details)
