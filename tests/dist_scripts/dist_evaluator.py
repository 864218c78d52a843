"""Run under torchrun (2 gloo CPU ranks) by tests/test_evaluator.py: each rank feeds its contiguous half of
the images to an Evaluator and computes (states gathered in rank order); each rank also computes, without
syncing, an Evaluator fed every image (the single-process result, with the same thread settings). Rank r
writes both records to OUT/rank{r}.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from difflens import distributed as D
from difflens.demo.sample_images import natural_crops
from difflens.metrics.evaluator import Evaluator

out, weights, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = D.init_distributed(device="cpu")
real, fake = natural_crops(n, 32, seed=1), natural_crops(n, 32, seed=2)
opts = {"metrics": ["fid", "kid", "is", "pr", "dc"], "inception_weights": weights, "device": "cpu",
        "batch_size": 3, "kid_subset_size": 6, "kid_subsets": 20, "is_splits": 3}
share = D.shard_indices(n, ctx.rank, ctx.world_size)
ev = Evaluator(**opts)
ev.update(real[share.start:share.stop], real=True)
ev.update(fake[share.start:share.stop], real=False)
synced = ev.compute()
single = Evaluator(**opts, sync_on_compute=False)
single.update(real, real=True)
single.update(fake, real=False)
alone = single.compute()
(out / f"rank{ctx.rank}.json").write_text(json.dumps({"dist": synced, "single": alone,
                                                      "share": [share.start, share.stop]}))
D.shutdown_distributed()
