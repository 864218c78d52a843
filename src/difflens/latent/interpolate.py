"""Latent interpolation with a norm check and a smoothness measure.

* ``slerp`` (Shoemake 1985; White 2016, "Sampling generative networks"): for endpoints a, b with angle
  w = arccos(<a,b> / (|a||b|)), ``slerp(a, b, t) = sin((1-t)w)/sin(w) a + sin(tw)/sin(w) b``. For |a| = |b|
  every point keeps that norm. ``lerp(a, b, t) = (1-t) a + t b``: for independent Gaussian seeds with
  |a| ~ |b| ~ sqrt(d) the midpoint has norm about sqrt(d/2), far outside the typical set (DESIGN.md
  section 4).
  Both are computed in float64 on the flattened tensors.
* ``latent_norm_z = (|z| - sqrt(d)) / sqrt(1/2)``: for z ~ N(0, I_d), |z| is approximately normal with mean
  sqrt(d) and standard deviation sqrt(1/2) (chi distribution, large d), so this is a z-score of the norm
  against the Gaussian typical set; |z| > 3 means the latent is atypical for the model's initial noise.
* Smoothness: the distance between consecutive frames in a feature space,
  ``d_i = |f(frame_i) - f(frame_{i-1})|``, summarized by the mean, max, max/mean (1 = evenly spaced steps;
  a large ratio locates a jump), the frame index where the largest jump lands, the path length, and the
  path efficiency |f(last) - f(first)| / path length (1 = a straight path through feature space).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from difflens.errors import DifflensError

METHODS = ("slerp", "lerp")


def lerp(a: Any, b: Any, t: float) -> Any:
    """Linear interpolation ``(1-t) a + t b``, computed in float64, returned in ``a``'s dtype."""
    a64, b64 = a.double(), b.double()
    return ((1.0 - t) * a64 + t * b64).to(a.dtype)


def slerp(a: Any, b: Any, t: float, eps: float = 1e-12) -> Any:
    """Spherical linear interpolation of the flattened tensors (float64), returned in ``a``'s dtype.

    Falls back to :func:`lerp` only when sin(w) < ``eps`` (parallel or antiparallel endpoints), where the
    formula is 0/0; for any angle above that the exact formula is used.
    """
    import torch

    a64, b64 = a.double().flatten(), b.double().flatten()
    na, nb = torch.linalg.vector_norm(a64), torch.linalg.vector_norm(b64)
    if float(na) == 0.0 or float(nb) == 0.0:
        return lerp(a, b, t)
    cos = torch.clamp(torch.dot(a64, b64) / (na * nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    if float(so) < eps:
        return lerp(a, b, t)
    out = (torch.sin((1.0 - t) * omega) / so) * a64 + (torch.sin(t * omega) / so) * b64
    return out.reshape(a.shape).to(a.dtype)


def interpolate(a: Any, b: Any, t: float, method: str) -> Any:
    """``slerp`` or ``lerp`` by name."""
    if method == "slerp":
        return slerp(a, b, t)
    if method == "lerp":
        return lerp(a, b, t)
    raise DifflensError(f"unknown interpolation method {method!r}.", f"use one of {', '.join(METHODS)}")


def frame_times(frames: int) -> list[float]:
    """``frames`` evenly spaced t in [0, 1], both ends included (at least 2 frames)."""
    if frames < 2:
        raise DifflensError(f"--frames {frames}: an interpolation needs at least 2 frames.",
                            "pass --frames 2 or more")
    return [i / (frames - 1) for i in range(frames)]


def latent_norm_z(z: Any) -> float:
    """``(|z| - sqrt(d)) / sqrt(1/2)``: the z-score of the latent's norm against N(0, I_d)'s typical set."""
    import torch

    flat = z.double().flatten()
    d = flat.numel()
    return float((torch.linalg.vector_norm(flat) - math.sqrt(d)) / math.sqrt(0.5))


def step_distances(features: Any) -> Any:
    """Euclidean distances between consecutive rows of a (N, D) feature array: (N-1,) float64."""
    import numpy as np

    f = np.asarray(features, dtype=np.float64)
    return np.linalg.norm(np.diff(f, axis=0), axis=1)


def smoothness_summary(features: Any) -> dict[str, Any]:
    """Numbers that make smoothness comparable across runs of the same feature space (see module doc)."""
    import numpy as np

    f = np.asarray(features, dtype=np.float64)
    d = step_distances(f)
    mean = float(d.mean())
    path = float(d.sum())
    endpoint = float(np.linalg.norm(f[-1] - f[0]))
    largest = int(np.argmax(d))
    return {
        "mean_step": mean,
        "std_step": float(d.std()),
        "max_step": float(d.max()),
        "max_over_mean": float(d.max() / mean) if mean > 0 else None,
        "largest_jump_frame": largest + 1,
        "path_length": path,
        "endpoint_distance": endpoint,
        "path_efficiency": endpoint / path if path > 0 else None,
    }


@dataclass
class InterpolationResult:
    """Frames ([0,1] tensors (3, H, W)), their t and latent-norm z-scores, and what was interpolated."""

    method: str
    endpoints: dict[str, Any]
    times: list[float]
    frames: list[Any]
    latent_norm_z: list[float]


def interpolate_seeds_prompts(pipe: Any, prompt: str, prompt2: str | None, seeds: Sequence[int],
                              frames: int, method: str, settings: Any) -> InterpolationResult:
    """Frames between two seeds (initial noise), two prompts (text embeddings) or both at once.

    With two seeds the initial noise is interpolated; with ``prompt2`` every text tensor
    (``prompt_embeds``, pooled embeddings) is interpolated with the same method and t; with one seed and
    ``prompt2`` the noise is fixed. PixArt's attention masks are the union of both prompts' masks for every
    frame. The stochastic-scheduler generator is the first seed's for every frame.
    """
    import torch

    from difflens.latent.generation import TextCond, encode_text, generate, initial_noise

    times = frame_times(frames)
    if method not in METHODS:
        raise DifflensError(f"unknown interpolation method {method!r}.", f"use one of {', '.join(METHODS)}")
    noise_a, _ = initial_noise(pipe, seeds[0], settings.size)
    noise_b = initial_noise(pipe, seeds[1], settings.size)[0] if len(seeds) > 1 else noise_a
    cond_a = encode_text(pipe, prompt, settings)
    cond_b = encode_text(pipe, prompt2, settings) if prompt2 is not None else cond_a
    extras = {k: torch.maximum(v, cond_b.extras[k]) for k, v in cond_a.extras.items()}
    out_frames, norms = [], []
    for t in times:
        noise = interpolate(noise_a, noise_b, t, method) if len(seeds) > 1 else noise_a
        if prompt2 is not None:
            cond = TextCond({k: interpolate(v, cond_b.tensors[k], t, method)
                             for k, v in cond_a.tensors.items()}, extras)
        else:
            cond = cond_a
        _, g = initial_noise(pipe, seeds[0], settings.size)
        out_frames.append(generate(pipe, cond, noise, g, settings))
        norms.append(latent_norm_z(noise))
    kind = "+".join(k for k, on in (("seeds", len(seeds) > 1), ("prompts", prompt2 is not None)) if on)
    endpoints: dict[str, Any] = {"kind": kind, "prompt": prompt, "prompt2": prompt2, "seeds": list(seeds)}
    return InterpolationResult(method, endpoints, times, out_frames, norms)


def interpolate_images(pipe: Any, images: Any, frames: int, method: str, size: int,
                       batch_size: int = 8) -> InterpolationResult:
    """Frames between two images: both are encoded to the model's normalized latents, the latents are
    interpolated, and each frame is the VAE decode of its latent (no denoising). ``latent_norm_z`` is then
    measured on that interpolated latent (the normalized latent has roughly unit variance, so the same
    typical-set reference applies only approximately)."""
    import torch

    from difflens.latent.vae import decode_latents, encode_images

    times = frame_times(frames)
    if method not in METHODS:
        raise DifflensError(f"unknown interpolation method {method!r}.", f"use one of {', '.join(METHODS)}")
    z = encode_images(pipe, images, batch_size=batch_size)
    za, zb = z[0:1], z[1:2]
    mids = [interpolate(za, zb, t, method) for t in times]
    decoded = decode_latents(pipe, torch.cat(mids), size=size, batch_size=batch_size)
    return InterpolationResult(method, {"kind": "images"}, times, list(decoded),
                               [latent_norm_z(m) for m in mids])
