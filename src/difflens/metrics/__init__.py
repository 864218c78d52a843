"""difflens metrics mode."""
