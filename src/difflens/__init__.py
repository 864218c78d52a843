"""difflens: analyze pre-trained diffusion models (metrics, schedule, attention, latent).

Importing this package is light: torch, diffusers and transformers are imported only inside the
functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
