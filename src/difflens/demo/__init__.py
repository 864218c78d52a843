"""The offline demo: a tiny random pipeline built in process and small real image sets."""
