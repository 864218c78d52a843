"""Run under torchrun (2 gloo CPU ranks) by tests/test_distributed.py.

    python -m torch.distributed.run --nproc_per_node 2 --standalone dist_check.py OUT_DIR

Each rank writes ``OUT_DIR/rank{R}.json`` (and ``.npz``) with what it computed: gathers, merged Gaussian
statistics of its shard of the features, distributed k-NN radii and precision/recall/density/coverage.
The test compares them with single-process values computed from the same data (``cases()``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(real, fake) feature pairs: Gaussian float32, float64 far from 0, and small integers full of exact
    ties and duplicates (distances equal to radii exactly, radii 0)."""
    rng = np.random.default_rng(0)
    gauss = (rng.standard_normal((203, 16)).astype(np.float32),
             (rng.standard_normal((157, 16)) * 1.2 + 0.3).astype(np.float32))
    far = (rng.standard_normal((61, 8)) + 1e3, rng.standard_normal((64, 8)) * 0.8 + 1e3)
    ties = (rng.integers(0, 5, (120, 3)).astype(np.float32), rng.integers(0, 6, (90, 3)).astype(np.float32))
    return {"gauss": gauss, "far": far, "ties": ties}


def main(out: Path) -> None:
    from difflens import distributed as D
    from difflens.errors import DifflensError
    from difflens.metrics.knn import distributed_knn_radii, distributed_prdc
    from difflens.metrics.shards import merge_gaussian_stats
    from difflens.metrics.stats import GaussianStats

    ctx = D.init_distributed(device="cpu")
    assert ctx.world_size == 2 and ctx.backend == "gloo", ctx
    res: dict = {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend}
    arrays: dict[str, np.ndarray] = {}

    # gathers: a different number of rows on each rank (0 on rank 1), several dtypes, rank order kept
    rows = 3 if ctx.rank == 0 else 0
    g = D.all_gather_array(np.full((rows, 2), ctx.rank + 1, dtype=np.int32))
    res["gather_int32"] = g.tolist()
    res["gather_bool"] = D.all_gather_array(np.array([ctx.rank == 1] * (ctx.rank + 1))).tolist()
    half = D.all_gather_array(np.full((ctx.rank + 1, 2), 0.5 + ctx.rank, dtype=np.float16), concat=False)
    res["gather_f16"] = [[str(p.dtype), p.tolist()] for p in half]
    res["json"] = D.all_gather_json({"r": ctx.rank})
    res["bcast"] = D.broadcast_json({"from": ctx.rank})
    res["sum"] = D.all_reduce_sum_int(np.array([1, ctx.rank])).tolist()
    try:  # a mismatch is reported on every rank (no hang): the shapes are gathered first
        D.all_gather_array(np.zeros((1, 2 + ctx.rank)))
        res["mismatch"] = None
    except DifflensError as exc:
        res["mismatch"] = str(exc)

    for name, (real, fake) in cases().items():
        # (a) statistics of each rank's contiguous shard, merged (Chan) in rank order
        sh = ctx.shard(len(real))
        merged = merge_gaussian_stats(GaussianStats.from_features(real[sh.start:sh.stop]))
        arrays[f"{name}_n"] = np.asarray(merged.n)
        arrays[f"{name}_mean"] = merged.mean
        arrays[f"{name}_m2"] = merged.m2
        # the shards gathered back are the features, row for row
        assert np.array_equal(D.all_gather_array(real[sh.start:sh.stop]), real)
        # (b) exact k-NN radii and metrics with the work shared out
        arrays[f"{name}_radii3"] = distributed_knn_radii(real, 3, block_size=32)
        res[f"{name}_prdc"] = distributed_prdc(real, fake, block_size=32)
        res[f"{name}_pr_k2"] = distributed_prdc(real, fake, k_pr=2, k_dc=4, block_size=1024,
                                                metrics=("precision", "recall"))
        radii5 = distributed_knn_radii(real, 5)
        res[f"{name}_dc_radii"] = distributed_prdc(real, fake, metrics=("density", "coverage"),
                                                   real_radii={5: radii5})
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"rank{ctx.rank}.npz", **arrays)
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    D.shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
