"""difflens generate mode."""
