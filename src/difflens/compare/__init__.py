"""Paired comparison of two sample sets generated from the same prompts (``difflens compare``)."""
