"""difflens.metrics.Evaluator, the training-loop API: the same images in batches of 1, 7 and 50 give the
record compute_metrics (the CLI's JSON) gives; evaluators over halves merged equal one over the whole;
save/load round trip; torch tensors; bad inputs; 2 torchrun ranks equal one process.

Why exact equality is possible: the Evaluator runs the extractor on fixed chunks of ``batch_size`` images
per side whatever the ``update`` sizes, i.e. on the very batches compute_metrics' extraction loop forms,
so the features are bit-identical and rows-based values (KID, IS, P/R/D/C) are equal exactly. FID streams
float64 statistics merged batch by batch (Chan), whose rounding differs from one pass by ~1e-15: FID (and
KID, for symmetry with the issue) are compared to 1e-9 relative.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import difflens
from difflens.errors import DifflensError

N = 12  # per side (Inception on CPU is the cost: every image is resized to 299)
OPTS: dict[str, Any] = {"device": "cpu", "kid_subset_size": 6, "kid_subsets": 20, "is_splits": 3}
METRICS = ["fid", "kid", "is", "pr", "dc"]
CLOSE = ("fid", "kid")  # float64 statistics: 1e-9 relative; everything else exactly


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from difflens.demo.sample_images import natural_crops
    from difflens.metrics.api import compute_metrics
    from difflens.metrics.inception import make_random_inception_weights

    root = tmp_path_factory.mktemp("evaluator")
    weights = make_random_inception_weights(root / "inception.pth")
    real, fake = natural_crops(N, 32, seed=1), natural_crops(N, 32, seed=2)
    ref = compute_metrics(real, fake, METRICS, inception_weights=weights, show_progress=False, **OPTS)
    from difflens.features.registry import get_extractor
    from difflens.metrics.config import MetricsConfig

    shared = get_extractor("inception", weights=weights, device="cpu",  # built once for every evaluator
                           impl=MetricsConfig().inception_impl)
    return {"root": root, "weights": weights, "real": real, "fake": fake, "ref": ref, "inception": shared}


def _evaluator(assets: dict[str, Any], **kw: Any) -> Any:
    from difflens.metrics import Evaluator

    ext = {"inception": assets["inception"]} if "inception_weights" not in kw else None
    return Evaluator(METRICS, **{"inception_weights": assets["weights"], "extractors": ext, **OPTS, **kw})


def _feed(ev: Any, real: Any, fake: Any, batch: int) -> Any:
    for s in range(0, len(real), batch):
        ev.update(real[s:s + batch], real=True)
    for s in range(0, len(fake), batch):
        ev.update(fake[s:s + batch], real=False)
    return ev


def _assert_record(got: dict[str, Any], ref: dict[str, Any]) -> None:
    """Same keys everywhere; metric values within the tolerances above; everything else equal."""
    assert got.keys() == ref.keys()
    assert got["metrics"].keys() == ref["metrics"].keys()
    for key, entry in ref["metrics"].items():
        assert got["metrics"][key].keys() == entry.keys(), key
        for field, want in entry.items():
            have = got["metrics"][key][field]
            if key in CLOSE and field == "value":
                assert math.isclose(have, want, rel_tol=1e-9), (key, have, want)
            else:
                assert have == want, (key, field, have, want)
    for part in ("n_real", "n_fake", "protocol", "warnings", "schema_version"):
        assert got[part] == ref[part], part


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_batches_of_any_size_give_the_cli_record(assets: dict[str, Any], batch: int) -> None:
    got = _feed(_evaluator(assets), assets["real"], assets["fake"], batch).compute()
    _assert_record(got, assets["ref"])
    assert set(got["metrics"]) == {"fid", "kid", "is", "precision", "recall", "density", "coverage"}


def test_halves_merged_equal_the_whole_and_state_round_trips(assets: dict[str, Any], tmp_path: Path) -> None:
    real, fake, h = assets["real"], assets["fake"], N // 2
    whole = _feed(_evaluator(assets, batch_size=h), real, fake, 5)  # the halves' chunks: [0:12], [12:24]
    a = _feed(_evaluator(assets, batch_size=h), real[:h], fake[:h], 5)
    b = _feed(_evaluator(assets, batch_size=h), real[h:], fake[h:], 5)
    b.save(tmp_path / "b.npz")  # a saved half merges like the live one
    from difflens.metrics import Evaluator

    b_loaded = Evaluator.load(tmp_path / "b.npz", inception_weights=assets["weights"])
    a.merge(b_loaded)
    ref = whole.compute()
    _assert_record(a.compute(), ref)
    whole.save(tmp_path / "whole.npz")
    _assert_record(Evaluator.load(tmp_path / "whole.npz", inception_weights=assets["weights"]).compute(), ref)
    with np.load(tmp_path / "whole.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert "fid/real_m2" in z.files and z["fid/real_m2"].dtype == np.float64


def test_reset_keeps_the_reference_and_torch_tensors_are_accepted(assets: dict[str, Any]) -> None:
    import torch

    ev = _feed(_evaluator(assets), assets["real"], assets["real"][::-1].copy(), 50)
    first = ev.compute()
    ev.reset(keep_real=True)
    fake_t = torch.from_numpy(assets["fake"]).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, H, W)
    ev.update(fake_t[:10], real=False)
    ev.update(fake_t[10:], real=False)
    _assert_record(ev.compute(), assets["ref"])
    assert first["metrics"]["fid"]["value"] != assets["ref"]["metrics"]["fid"]["value"]


def test_bad_inputs_are_one_clear_error_each(assets: dict[str, Any], tmp_path: Path) -> None:
    import torch

    from difflens.metrics import Evaluator
    from difflens.metrics.inception import make_random_inception_weights

    ev = _evaluator(assets)
    img = assets["real"][:2]
    cases = [
        (lambda: ev.update(img.astype(np.float32) / 255, real=True), "uint8"),
        (lambda: ev.update(img.transpose(0, 3, 1, 2).copy(), real=True), "channels-last"),
        (lambda: ev.update(img[0], real=True), r"\(N, H, W, 3\)"),
        (lambda: ev.update(torch.from_numpy(img), real=True), "permute"),
        (lambda: ev.update(torch.from_numpy(img).permute(0, 3, 1, 2).float(), real=True), "uint8"),
        (lambda: Evaluator(["clip"]).update(img, real=False), "prompt"),
        (lambda: Evaluator(["clip"]).update(img, real=False, prompts=["a cat"]), "2 images, 1 prompts"),
        (lambda: Evaluator(["fid", "bogus"]), "unknown metric"),
        (lambda: _evaluator(assets).merge(Evaluator(["fid"])), "different metrics"),
        (lambda: _evaluator(assets).merge(_evaluator(assets, seed=1)), "different metrics or settings"),
        (lambda: _evaluator(assets).compute(), "no real images"),
    ]
    for call, message in cases:
        with pytest.raises(DifflensError, match=message):
            call()
    # merge of evaluators whose extractors differ (other weights): refused
    other_w = make_random_inception_weights(tmp_path / "other.pth", seed=1)
    a = _feed(_evaluator(assets), img, img, 2)
    b = _feed(_evaluator(assets, inception_weights=other_w), img, img, 2)
    with pytest.raises(DifflensError, match="extractors differ"):
        a.merge(b)
    # a state file of another version, and one loaded under another protocol (other weights)
    a.save(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(str(data["__header__"]))
    np.savez(tmp_path / "old.npz", **{**data, "__header__": np.asarray(json.dumps({**header, "version": 0}))})
    with pytest.raises(DifflensError, match="version 0"):
        Evaluator.load(tmp_path / "old.npz")
    moved = Evaluator.load(tmp_path / "a.npz", inception_weights=other_w)
    with pytest.raises(DifflensError, match="another protocol"):
        moved.update(img, real=False)
        moved.compute()
    with pytest.raises(DifflensError, match="protocol 'tf-legacy'"):
        Evaluator.load(tmp_path / "a.npz", protocol="clean")


def test_two_torchrun_ranks_equal_one_process(assets: dict[str, Any], tmp_path: Path) -> None:
    """2 gloo CPU ranks, each with its contiguous half; every rank's compute() equals the one-process
    Evaluator over all images (made in the same launch, so with the same thread settings)."""
    script = Path(__file__).parent / "dist_scripts" / "dist_evaluator.py"
    src = str(Path(difflens.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(script), str(tmp_path), str(assets["weights"]), str(N)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
                          check=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["share"] for r in ranks] == [[0, N // 2], [N // 2, N]]
    for r in ranks:
        assert r["dist"].pop("distributed")["world_size"] == 2  # as compute_metrics records under torchrun
        _assert_record(r["dist"], r["single"])
    assert ranks[0]["dist"]["metrics"] == ranks[1]["dist"]["metrics"]  # every rank, the same record


class _StubWeights:
    sha256, path, source, standard, random_init = "0" * 64, "stub.pth", "test", False, True

    def warning(self) -> str:
        return "stub weights"


class _StubInception:
    """A cheap deterministic extractor (a fixed projection of the pixels) for the Evaluator's own logic."""

    name, layers, device, weights = "inception", ("pool3", "logits"), "cpu", _StubWeights()

    def __call__(self, images: Any) -> dict[str, Any]:
        x = np.stack(images).astype(np.float32).reshape(len(images), -1)
        proj = np.random.default_rng(0).normal(size=(x.shape[1], 32)).astype(np.float32) / 100
        f = x @ proj
        return {"pool3": f, "logits": f[:, :16]}


def test_every_image_counts_whatever_the_update_and_chunk_sizes() -> None:
    """Updates that straddle the chunk boundary keep every image, in order (stub extractor: fast)."""
    from difflens.metrics import Evaluator

    rng = np.random.default_rng(1)
    real, fake = (rng.integers(0, 255, (17, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    records = []
    for update in (1, 5, 17):
        ev = Evaluator(METRICS, extractors={"inception": _StubInception()}, batch_size=6, **OPTS)
        records.append(_feed(ev, real, fake, update).compute())
        assert records[-1]["n_real"] == records[-1]["n_fake"] == 17
    for rec in records[1:]:
        _assert_record(rec, records[0])
