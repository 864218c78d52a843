"""difflens latent mode: probe a latent diffusion model's latent space.

Modules (import the one you need; nothing heavy is imported here):

* :mod:`~difflens.latent.vae` — encode/decode with ``scaling_factor``/``shift_factor``, Flux 2x2 packing, PSNR
* :mod:`~difflens.latent.generation` — generating from explicit initial noise and text embeddings
* :mod:`~difflens.latent.interpolate` — slerp/lerp, latent-norm z-score, step distances, smoothness
* :mod:`~difflens.latent.direction` — text-embedding directions applied with scales, CLIP-measured effect
* :mod:`~difflens.latent.ood` — latent-zscore, Mahalanobis (Ledoit-Wolf), diffusion reconstruction
  (Graham et al. 2023); AUROC / AUPR / FPR@95%TPR
* :mod:`~difflens.latent.features` — feature spaces: ``vae`` (default), ``clip``, ``inception``
* :mod:`~difflens.latent.images` — image folders and the resize rule for mixed sizes
* :mod:`~difflens.latent.plots` — strips, step-distance plot, score histograms
* :mod:`~difflens.latent.api` — ``encode``, ``interpolate``, ``direction``, ``ood``: validate, compute, write
"""
