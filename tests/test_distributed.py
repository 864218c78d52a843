"""Distributed runs: 2 CPU processes with gloo, launched by torchrun (``python -m torch.distributed.run
--nproc_per_node 2 --standalone``), give the single-process results: Gaussian statistics to float64
rounding, k-NN metrics exactly, generation pixel for pixel with the same manifest, resumable per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import difflens
from difflens import distributed as D
from difflens.distributed import context as dist_context
from difflens.errors import DifflensError

SCRIPTS = Path(__file__).parent / "dist_scripts"


def _torchrun(args: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Launch ``args`` (a script path or ``-m module ...``) on 2 gloo CPU ranks with torchrun. The timeout
    only guards against a hang: about a minute on an idle 2-core machine, past 240 s on a loaded one."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(extra_env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a launched process: this checkout's difflens, no GPU, no launcher variables,
    one thread per process (torchrun's default; CPU float results depend on the thread count set at
    start-up, so single-process references are made the same way)."""
    src = str(Path(difflens.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
           **(extra or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])


# ------------------------------------------------------------------------------------- in one process


def test_shard_indices_cover_range_in_rank_order_and_balance() -> None:
    for n in (0, 1, 5, 7, 64, 101):
        for world in (1, 2, 3, 8):
            shards = [D.shard_indices(n, r, world) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))  # contiguous, rank order, complete
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            for block in (1, 2, 4):
                aligned = [D.aligned_shard(n, r, world, block) for r in range(world)]
                assert [i for s in aligned for i in s] == list(range(n))
                assert all(s.start % block == 0 for s in aligned if len(s))
    items = list("abcdefg")
    assert D.shard_list(items, 0, 2) == list("abcd") and D.shard_list(items, 1, 2) == list("efg")
    assert D.shard_list(items, 0, 2, block=3) == list("abcdef")
    assert D.shard_list(items, 1, 2, block=3) == ["g"]
    with pytest.raises(ValueError):
        D.shard_indices(3, 2, 2)


def test_single_process_collectives_are_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist_context, "_CONTEXT", None)
    ctx = D.init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 1, None)
    assert ctx.is_main and not ctx.is_distributed
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert np.array_equal(D.all_gather_array(x, ctx), x)
    assert D.all_gather_json({"a": 1}, ctx) == [{"a": 1}]
    assert D.broadcast_json([1, 2], ctx) == [1, 2]
    assert D.all_reduce_sum_int([3, 4], ctx).tolist() == [3, 4]
    with pytest.raises(TypeError):
        D.all_reduce_sum_int(np.ones(2), ctx)
    with pytest.raises(DifflensError, match="dtype"):
        D.all_gather_array(np.array(["a"]), ctx)
    assert D.is_main()
    monkeypatch.setattr(dist_context, "_CONTEXT", None)


def test_launcher_variables_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist_context, "_CONTEXT", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DifflensError, match="RANK is not"):
        D.init_distributed(device="cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DifflensError, match="MASTER_ADDR"):
        D.init_distributed(device="cpu")
    assert not D.is_main()  # RANK=1, no group: read from the environment
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DifflensError, match="not an integer"):
        D.init_distributed(device="cpu")
    assert dist_context._CONTEXT is None


# ------------------------------------------------------- statistics and k-NN metrics (one torchrun launch)


@pytest.fixture(scope="module")
def dist_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist-check")
    _ok(_torchrun([str(SCRIPTS / "dist_check.py"), str(out)], out))
    return out


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dist_check", SCRIPTS / "dist_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cases()


def test_gathers_keep_rank_order_sizes_and_dtypes(dist_check: Path) -> None:
    ranks = [json.loads((dist_check / f"rank{r}.json").read_text("utf-8")) for r in (0, 1)]
    for res in ranks:
        assert (res["world_size"], res["backend"]) == (2, "gloo")
        assert res["gather_int32"] == [[1, 1]] * 3  # rank 1 sent no rows
        assert res["gather_bool"] == [False, True, True]
        assert res["gather_f16"] == [["float16", [[0.5, 0.5]]], ["float16", [[1.5, 1.5], [1.5, 1.5]]]]
        assert res["json"] == [{"r": 0}, {"r": 1}] and res["bcast"] == {"from": 0}
        assert res["sum"] == [2, 1]
        assert "rank 1 holds a float64 (1, 3) array where rank 0 holds" in res["mismatch"] or \
            "rank 0 holds a float64 (1, 2) array where rank 1 holds" in res["mismatch"]


def test_merged_gaussian_stats_equal_single_pass_to_float64_rounding(dist_check: Path) -> None:
    from difflens.metrics.stats import GaussianStats

    r0, r1 = (np.load(dist_check / f"rank{r}.npz") for r in (0, 1))
    for name, (real, _) in _cases().items():
        for key in ("n", "mean", "m2"):  # every rank holds the same bits
            assert np.array_equal(r0[f"{name}_{key}"], r1[f"{name}_{key}"]), (name, key)
        one = GaussianStats.from_features(real)
        assert int(r0[f"{name}_n"]) == one.n == len(real)
        scale = np.abs(one.m2).max()
        np.testing.assert_allclose(r0[f"{name}_mean"], one.mean, rtol=0, atol=1e-13 * np.abs(one.mean).max())
        np.testing.assert_allclose(r0[f"{name}_m2"], one.m2, rtol=0, atol=1e-12 * scale)


def test_distributed_knn_metrics_equal_single_process_exactly(dist_check: Path) -> None:
    from difflens.metrics import knn

    ranks = [json.loads((dist_check / f"rank{r}.json").read_text("utf-8")) for r in (0, 1)]
    r0 = np.load(dist_check / "rank0.npz")
    for name, (real, fake) in _cases().items():
        assert np.array_equal(r0[f"{name}_radii3"], knn.knn_radii(real, 3)), name
        want = knn.prdc(real, fake)
        want_k2 = knn.prdc(real, fake, k_pr=2, k_dc=4, metrics=("precision", "recall"))
        want_dc = knn.prdc(real, fake, metrics=("density", "coverage"))
        for res in ranks:
            assert res[f"{name}_prdc"] == want, name  # == on floats: exactly the same values
            assert res[f"{name}_pr_k2"] == want_k2, name
            assert res[f"{name}_dc_radii"] == want_dc, name


# ------------------------------------ the difflens CLI under torchrun vs one process (two launches at once)

N = 8  # samples per generation run in dist_cli.py


def _plain(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """One plain process (the single-process reference), started in the background."""
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def dist_cli(tiny_pipeline_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run tests/dist_scripts/dist_cli.py under torchrun (WORK=dist) and as one process (WORK=single)."""
    from difflens.demo.sample_images import grayscale_crops, natural_crops, write_folder
    from difflens.metrics.inception import make_random_inception_weights

    root = tmp_path_factory.mktemp("dist-cli")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na red car on the street\na dog in the snow\n", encoding="utf-8")
    real = write_folder(natural_crops(12, 32, seed=0), root / "real")
    fake = write_folder(np.concatenate([natural_crops(6, 32, seed=1), grayscale_crops(5, 32)]), root / "fake")
    weights = make_random_inception_weights(root / "inception-random.pth")
    model = tiny_pipeline_dir("sd15")
    inputs = [str(model), str(prompts), str(real), str(fake), str(weights)]
    script = str(SCRIPTS / "dist_cli.py")
    single = _plain([script, str(root / "single"), *inputs], root)
    try:
        dist = _torchrun([script, str(root / "dist"), *inputs], root)
    finally:
        out, err = single.communicate(timeout=900)
    assert single.returncode == 0, (out[-3000:], err[-5000:])
    _ok(dist)
    return {"dist": root / "dist", "single": root / "single"}


def _folder(out: Path) -> tuple[dict[int, str], dict[str, bytes]]:
    """Manifest lines by index, and the decoded pixels of every PNG by file name."""
    from PIL import Image

    lines = {json.loads(x)["index"]: x for x in (out / "manifest.jsonl").read_text("utf-8").splitlines()}
    pixels = {}
    for p in sorted((out / "images").iterdir()):
        with Image.open(p) as im:
            pixels[p.name] = np.asarray(im).tobytes()
    return lines, pixels


def test_generate_under_torchrun_equals_single_process_and_resumes_per_rank(dist_cli: dict) -> None:
    dist, single = dist_cli["dist"], dist_cli["single"]
    # batch 2: ranks get whole batches, so each sample is made in the same batch as in the single run;
    # batch 1: after the crash each rank resumed its share of what was left
    for name in ("dist-b2", "dist-b1"):
        got, want = _folder(dist / name), _folder(single / name)
        assert sorted(got[0]) == list(range(N)) and len(got[1]) == N
        assert got == want, name  # the same manifest lines, the same pixels
        assert not [p for p in (dist / name / "images").iterdir() if p.suffix != ".png"]  # no temp files
    crash = json.loads((dist / "crash.json").read_text("utf-8"))
    assert crash == {"crashed": True, "done": 2, "world_size": 2}  # one sample per rank, then the crash
    summary = json.loads((dist / "dist-b1" / "summary.json").read_text("utf-8"))
    assert (summary["generated_this_run"], summary["skipped_finished"]) == (N - 2, 2)
    assert summary["distributed"]["world_size"] == 2
    assert json.loads((single / "crash.json").read_text("utf-8"))["world_size"] == 1


def test_metrics_under_torchrun_equal_single_process(dist_cli: dict) -> None:
    from difflens.metrics.stats import load_stats

    dist, single = dist_cli["dist"], dist_cli["single"]
    got = json.loads((dist / "metrics-all.json").read_text("utf-8"))
    want = json.loads((single / "metrics-all.json").read_text("utf-8"))
    assert got["distributed"] == {"world_size": 2, "backend": "gloo", "sharding": "contiguous"}
    assert "distributed" not in want
    assert set(got["metrics"]) == {"fid", "kid", "is", "precision", "recall", "density", "coverage"}
    # features extracted in whole batches per rank and gathered in file order: the single-process
    # features, so every value is the single-process value; the k-NN work was shared out, exactly
    assert got["metrics"] == want["metrics"]
    assert (got["n_real"], got["n_fake"]) == (want["n_real"], want["n_fake"]) == (12, 11)

    # FID alone: 11 samples in 2048 dimensions, so FID takes its trace term from the features, which
    # are gathered: the same value and statistics as the single process
    got_fid = json.loads((dist / "metrics-fid.json").read_text("utf-8"))["metrics"]["fid"]["value"]
    want_fid = json.loads((single / "metrics-fid.json").read_text("utf-8"))["metrics"]["fid"]["value"]
    assert got_fid == want_fid == got["metrics"]["fid"]["value"]
    a, _, _ = load_stats(dist / "fake-stats.npz")
    b, _, _ = load_stats(single / "fake-stats.npz")
    assert a.n == b.n == 11 and np.array_equal(a.mean, b.mean) and np.array_equal(a.m2, b.m2)

    # statistics alone: no metric needs the features, so none travel; each rank's (n, mean, M2) is
    # merged (Chan): equal to float64 rounding
    merged, fp, _ = load_stats(dist / "real-stats.npz")
    one, fp1, _ = load_stats(single / "real-stats.npz")
    assert merged.n == one.n == 12 and fp == fp1
    np.testing.assert_allclose(merged.mean, one.mean, rtol=0, atol=1e-13 * np.abs(one.mean).max())
    np.testing.assert_allclose(merged.m2, one.m2, rtol=0, atol=1e-12 * np.abs(one.m2).max())
