"""difflens schedule mode: noise schedules of any diffusers scheduler on one log-SNR axis.

- :mod:`difflens.schedule.sources`: spec (preset, config file, pipeline folder, hub id) -> scheduler
- :mod:`difflens.schedule.adapt`: scheduler -> arrays (family, timesteps, sigma, alphas_cumprod, lambda)
- :mod:`difflens.schedule.trace`: set_timesteps + step() on dummy tensors -> noise levels actually visited
- :mod:`difflens.schedule.checks`: named checks (terminal SNR, spacing, listed vs traced, clamps)
- :mod:`difflens.schedule.api`: ``analyze_schedules`` -> result dict; ``write_outputs`` -> files
- :mod:`difflens.schedule.plots`: PNGs from a result dict

Nothing heavy is imported here; import the submodules you need.
"""
