"""Run by tests/test_distributed.py under torchrun (2 gloo CPU ranks) and, for the reference, as one plain
process with the same thread settings: the ``difflens`` CLI itself, as ``torchrun -m difflens ...`` would
run it, several commands in one launch to save start-up time.

    python -m torch.distributed.run --nproc_per_node 2 --standalone dist_cli.py WORK MODEL PROMPTS REAL FAKE W
    OMP_NUM_THREADS=1 python dist_cli.py WORK MODEL PROMPTS REAL FAKE W

1. ``difflens generate`` at batch size 2 into WORK/dist-b2;
2. ``difflens generate`` at batch size 1 into WORK/dist-b1, every rank crashing after its first sample
   (the runner's fault hook), then the same command again: each rank resumes its share of what is left
   (WORK/crash.json records how many samples were finished at the crash);
3. ``difflens metrics`` with every metric (features gathered, k-NN work shared) -> WORK/metrics-all.json;
4. ``difflens metrics --metrics fid`` -> WORK/metrics-fid.json and WORK/fake-stats.npz (N <= 2048: FID
   takes its trace from the features, so they are gathered);
5. ``difflens metrics --real R --save-stats`` -> WORK/real-stats.npz (no metric needs the features: the
   ranks' statistics are merged, no features travel).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def run(args: list[str]) -> None:
    from difflens.cli import main

    try:
        main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def main() -> None:
    from difflens.distributed import barrier, get_context, shutdown_distributed
    from difflens.testing import FAULT_ENV

    work, model, prompts, real, fake, weights = (Path(a) for a in sys.argv[1:7])
    ctx = get_context()
    work.mkdir(parents=True, exist_ok=True)

    def gen(out: str, batch: int) -> list[str]:
        return ["generate", "--model", str(model), "--prompts", str(prompts), "--num-samples", "8",
                "--out", str(work / out), "--steps", "2", "--height", "32", "--width", "32", "--seed", "5",
                "--batch-size", str(batch), "--device", "cpu"]

    run(gen("dist-b2", 2))

    os.environ[FAULT_ENV] = "crash:1"
    try:
        run(gen("dist-b1", 1))
        crashed = False
    except RuntimeError as exc:
        crashed = "injected fault" in str(exc)
    del os.environ[FAULT_ENV]
    barrier()
    if ctx.is_main:
        done = sum(1 for line in (work / "dist-b1" / "manifest.jsonl").read_text().splitlines() if line)
        (work / "crash.json").write_text(json.dumps({"crashed": crashed, "done": done,
                                                          "world_size": ctx.world_size}))
    barrier()
    run(gen("dist-b1", 1))

    common = ["--real", str(real), "--fake", str(fake), "--inception-weights", str(weights),
              "--device", "cpu", "--batch-size", "4", "--kid-subset-size", "6", "--kid-subsets", "10",
              "--is-splits", "2"]
    run(["metrics", *common, "--json", str(work / "metrics-all.json")])
    run(["metrics", *common, "--metrics", "fid", "--json", str(work / "metrics-fid.json"),
         "--save-fake-stats", str(work / "fake-stats.npz")])
    run(["metrics", "--real", str(real), "--inception-weights", str(weights), "--device", "cpu",
         "--batch-size", "4", "--save-stats", str(work / "real-stats.npz")])
    shutdown_distributed()


if __name__ == "__main__":
    main()
