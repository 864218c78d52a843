"""difflens schedule mode."""
