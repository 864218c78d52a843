"""difflens attention mode."""
