"""difflens latent mode."""
