"""difflens attention mode: which image regions each prompt word drives, at which step and layer.

Function API (heavy imports happen inside): :func:`difflens.attention.api.run_attention` and
:func:`difflens.attention.api.write_outputs`. Modules: ``layout`` (find cross/joint-attention layers),
``replay`` (side computation of the probabilities), ``capture`` (context manager around the processors),
``aggregate`` (online, memory-bounded maps), ``words`` (words -> token positions), ``measures`` (spatial
entropy, peak concentration), ``plots`` (attention_maps.png), ``cli`` (``difflens attention``).
"""
