"""difflens analyze mode."""
