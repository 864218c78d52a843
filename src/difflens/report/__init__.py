"""The shareable report: one self-contained HTML page built from a run folder's saved outputs."""
