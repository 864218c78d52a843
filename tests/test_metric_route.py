"""The generic route (metrics/route.py): a user's metric of the ``features`` group, on a user's extractor,
run by ``difflens metrics`` with nothing but its interface: sides, prompts (also to a prompted extractor,
aligned row by row when files are skipped), statistics sides, JSON entries and up-front errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, run_cli
from difflens.features.base import ExtractorBase, Fingerprint
from difflens.metrics.base import FeatureBatch, Metric, MetricResult, MetricSpec, Requirement


class ToyMean(ExtractorBase):
    name = "toy-mean"
    layers = ("mean",)

    def __init__(self, device: str | None = "cpu", offline: bool = False) -> None:
        self.device = device or "cpu"

    def preprocessing(self) -> dict[str, Any]:
        return {"pixels": "x/255"}

    def fingerprint(self, layer: str) -> Fingerprint:
        return Fingerprint(protocol="identity", weights_sha256="none", extractor=self.name,
                           feature_layer=layer)

    def forward(self, prepared: Any) -> dict[str, Any]:
        x = np.stack(prepared).astype(np.float64) / 255.0
        return {"mean": x.mean(axis=(1, 2)).astype(np.float32)}


class ToyPromptScore(ToyMean):
    """Scores an image against its prompt: mean pixel + the prompt's length (so a misaligned prompt shows)."""

    name = "toy-prompt"
    layers = ("score",)
    prompted = True

    def forward(self, prepared: Any, prompts: list[str] | None = None) -> dict[str, Any]:
        assert prompts is not None and len(prompts) == len(prepared)
        x = np.stack(prepared).astype(np.float64) / 255.0
        return {"score": (x.mean(axis=(1, 2, 3)) + np.array([len(p) for p in prompts]))[:, None]}


class ToyGap(Metric):
    """Euclidean distance between the two sides' mean features (takes a side from statistics ``mu``)."""

    name = "toy-gap"
    keys: ClassVar[tuple[str, ...]] = ("toy_gap",)
    group = "features"

    def __init__(self) -> None:
        self.sums = {True: np.zeros(3), False: np.zeros(3)}
        self.n = {True: 0, False: 0}

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement("toy-mean", "mean"),)

    def update(self, batch: FeatureBatch) -> None:
        rows = np.asarray(batch.features[("toy-mean", "mean")], dtype=np.float64)
        self.sums[batch.real] += rows.sum(axis=0)
        self.n[batch.real] += len(rows)

    def load_side_stats(self, real: bool, arrays: dict[str, Any], fingerprint: Any) -> None:
        self.sums[real], self.n[real] = np.asarray(arrays["mu"], dtype=np.float64) * 1.0, 1

    def compute(self, context: Any = None) -> dict[str, MetricResult]:
        gap = float(np.linalg.norm(self.sums[True] / self.n[True] - self.sums[False] / self.n[False]))
        return {"toy_gap": MetricResult("toy_gap", gap, counts={"n_fake": self.n[False]})}


class ToyPrompted(Metric):
    name = "toy-prompted"
    keys: ClassVar[tuple[str, ...]] = ("toy_prompted",)
    group = "features"

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.scores: list[float] = []
        self.prompts: list[str] = []

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement("toy-prompt", "score", sides="fake", prompts=True),)

    def update(self, batch: FeatureBatch) -> None:
        assert batch.prompts is not None
        self.scores += np.asarray(batch.features[("toy-prompt", "score")])[:, 0].tolist()
        self.prompts += batch.prompts

    def settings(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def compute(self, context: Any = None) -> dict[str, MetricResult]:
        return {"toy_prompted": MetricResult("toy_prompted", float(np.mean(self.scores)) + self.offset,
                                             fields={"prompts": self.prompts},
                                             counts={"n_fake": len(self.scores)})}


class ToyPool3Gap(ToyGap):
    """ToyGap on the first three Inception pool3 dimensions (for --real-features / --fake-features)."""

    name = "toy-pool3"
    keys: ClassVar[tuple[str, ...]] = ("toy_pool3",)

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement("inception", "pool3"),)

    def update(self, batch: FeatureBatch) -> None:
        rows = np.asarray(batch.features[("inception", "pool3")], dtype=np.float64)[:, :3]
        self.sums[batch.real] += rows.sum(axis=0)
        self.n[batch.real] += len(rows)

    def compute(self, context: Any = None) -> dict[str, MetricResult]:
        return {"toy_pool3": MetricResult("toy_pool3", super().compute()["toy_gap"].value)}


@pytest.fixture
def toys() -> Any:
    from difflens.features.registry import register_extractor, unregister_extractor
    from difflens.metrics import base

    register_extractor("toy-mean", ToyMean)
    register_extractor("toy-prompt", ToyPromptScore)
    for cls in (ToyGap, ToyPrompted, ToyPool3Gap):
        base.register_metric(MetricSpec(cls.name, f"{__name__}:{cls.__name__}", cls.keys, "features"))
    yield
    for name in ("toy-mean", "toy-prompt"):
        unregister_extractor(name)
    for cls in (ToyGap, ToyPrompted, ToyPool3Gap):
        base._REGISTRY.pop(cls.name)


def _folder(path: Path, seed: int, n: int = 5) -> np.ndarray:
    path.mkdir()
    imgs = np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(path / f"{i:02d}.png")
    return imgs


def test_a_user_metric_runs_through_difflens_metrics(toys: Any, tmp_path: Path, capsys: Any) -> None:
    real = _folder(tmp_path / "real", 0)
    fake = _folder(tmp_path / "fake", 1, n=4)
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
                            "--metrics", "toy-gap", "--json", str(out)], capsys)
    assert code == 0, err
    rec = json.loads(out.read_text())
    expect = np.linalg.norm((real / 255.0).mean(axis=(0, 1, 2)) - (fake / 255.0).mean(axis=(0, 1, 2)))
    # float32 features summed in float64: equal to far below float32's resolution of the means
    assert rec["metrics"]["toy_gap"]["value"] == pytest.approx(expect, rel=1e-6)
    assert rec["metrics"]["toy_gap"]["n_fake"] == 4 and rec["n_fake"] == 4
    assert rec["protocol"]["features"]["toy-gap"]["extractors"]["toy-mean"]["mean"]["extractor"] == "toy-mean"
    assert rec["protocol"]["settings"]["metrics"] == ["toy-gap"]


def test_prompts_reach_a_prompted_extractor_row_by_row(toys: Any, tmp_path: Path, capsys: Any) -> None:
    fake = _folder(tmp_path / "fake", 2, n=4)
    (tmp_path / "fake" / "01.png").write_bytes(b"not a png")  # skipped with a warning: prompts must follow
    lines = ["a", "bb", "ccc", "dddd"]
    (tmp_path / "fake" / "manifest.jsonl").write_text("".join(
        json.dumps({"file": f"{i:02d}.png", "prompt": p}) + "\n" for i, p in enumerate(lines)))
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", "--fake", str(tmp_path / "fake"), "--metrics", "toy-prompted",
                            "--json", str(out)], capsys)
    assert code == 0, err
    rec = json.loads(out.read_text())
    kept = [0, 2, 3]
    expect = np.mean([(fake[i] / 255.0).mean() + len(lines[i]) for i in kept])
    assert rec["metrics"]["toy_prompted"]["value"] == pytest.approx(expect, rel=1e-9)
    assert rec["metrics"]["toy_prompted"]["prompts"] == [lines[i] for i in kept]
    assert any("01.png" in w for w in rec["warnings"])


def test_metric_options_reach_the_metric(toys: Any, tmp_path: Path) -> None:
    from difflens.metrics.evaluate import evaluate

    _folder(tmp_path / "fake", 3, n=2)
    (tmp_path / "p.txt").write_text("x\n")
    a = evaluate(None, str(tmp_path / "fake"), "toy-prompted", prompts=str(tmp_path / "p.txt"))
    b = evaluate(None, str(tmp_path / "fake"), "toy-prompted", prompts=str(tmp_path / "p.txt"),
                 metric_options={"toy-prompted": {"offset": 10.0}})
    assert b["metrics"]["toy_prompted"]["value"] == pytest.approx(a["metrics"]["toy_prompted"]["value"] + 10)
    assert b["protocol"]["features"]["toy-prompted"]["settings"] == {"offset": 10.0}


def test_a_side_from_statistics(toys: Any, tmp_path: Path, capsys: Any) -> None:
    fake = _folder(tmp_path / "fake", 4, n=3)
    mu = np.array([0.5, 0.25, 0.75])
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=np.eye(3))
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", "--real", str(tmp_path / "ref.npz"), "--fake", str(tmp_path / "fake"),
                            "--metrics", "toy-gap", "--json", str(out)], capsys)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert rec["metrics"]["toy_gap"]["value"] == pytest.approx(
        np.linalg.norm(mu - (fake / 255.0).mean(axis=(0, 1, 2))), rel=1e-6)
    assert any("no protocol fingerprint" in w for w in rec["warnings"])


@pytest.mark.parametrize("case", ["no-prompts", "no-real"])
def test_bad_input_is_one_line_and_writes_nothing(case: str, toys: Any, tmp_path: Path, capsys: Any) -> None:
    _folder(tmp_path / "fake", 5, n=3)
    out = tmp_path / "m.json"
    metric = "toy-prompted" if case == "no-prompts" else "toy-gap"
    code, _, err = run_cli(["metrics", "--fake", str(tmp_path / "fake"), "--json", str(out), "--metrics",
                            metric], capsys)
    assert_one_line_error(code, err, metric, "prompts" if case == "no-prompts" else "--real")
    assert not out.exists()


def test_prompts_that_do_not_pair_are_refused_before_any_extractor(toys: Any) -> None:
    from difflens.errors import DifflensError
    from difflens.metrics.route import accumulate

    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(DifflensError, match="2 prompts for 3 images"):
        accumulate(["toy-prompted"], None, images, prompts=["a", "b"])


def test_the_evaluator_runs_features_group_metrics_as_the_cli_does(toys: Any, tmp_path: Path) -> None:
    """The training-loop API gives the CLI's values for a features-group metric, prompts and options
    included, fed in batches that do not line up with the CLI's."""
    from difflens.metrics.evaluate import evaluate
    from difflens.metrics.evaluator import Evaluator

    real = _folder(tmp_path / "real", 6, n=5)
    fake = _folder(tmp_path / "fake", 7, n=4)
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    options = {"toy-prompted": {"offset": 2.0}}
    cli = evaluate(str(tmp_path / "real"), str(tmp_path / "fake"), "toy-gap,toy-prompted",
                   prompts=str(tmp_path / "p.txt"), metric_options=options)
    ev = Evaluator(["toy-gap", "toy-prompted"], batch_size=3, metric_options=options)
    ev.update(real[:2], real=True)
    ev.update(real[2:], real=True)
    prompts = ["one", "two", "one", "two"]  # the --prompts file cycled over the sorted images
    ev.update(fake[:1], real=False, prompts=prompts[:1])
    ev.update(fake[1:], real=False, prompts=prompts[1:])
    got = ev.compute()
    for key in ("toy_gap", "toy_prompted"):
        # float32 features, float64 sums in another batch order: equal far below float32 resolution
        assert got["metrics"][key]["value"] == pytest.approx(cli["metrics"][key]["value"], rel=1e-6)
    assert got["protocol"]["features"]["toy-prompted"]["settings"] == {"offset": 2.0}
    with pytest.raises(Exception, match="toy-prompted"):
        ev.update(fake[:1], real=False)


def test_precomputed_features_feed_the_metrics_without_extraction(toys: Any, tmp_path: Path,
                                                                  capsys: Any) -> None:
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(6, 2048)), rng.normal(1.0, size=(5, 2048))
    np.save(tmp_path / "r.npy", real.astype(np.float32))
    np.save(tmp_path / "f.npy", fake.astype(np.float32))
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", "--real-features", str(tmp_path / "r.npy"), "--fake-features",
                            str(tmp_path / "f.npy"), "--metrics", "toy-pool3", "--json", str(out),
                            "--offline"], capsys)
    assert code == 0, err  # offline and no Inception weights anywhere: nothing was built
    expect = np.linalg.norm(real[:, :3].astype(np.float32).mean(0) - fake[:, :3].astype(np.float32).mean(0))
    assert json.loads(out.read_text())["metrics"]["toy_pool3"]["value"] == pytest.approx(expect, rel=1e-6)
    _folder(tmp_path / "fake", 9, n=3)
    code, _, err = run_cli(["metrics", "--real-features", str(tmp_path / "r.npy"), "--fake",
                            str(tmp_path / "fake"), "--metrics", "toy-gap", "--json", str(out)], capsys)
    assert_one_line_error(code, err, "toy-gap", "--real-features")
