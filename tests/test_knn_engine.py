"""The one k-NN engine: a block of rows is computed anywhere with the same exact result, and the counts
of disjoint row blocks merge into the counts of the whole set. This is what the torchrun run relies on
(it only shards rows and sums counts; tests/test_distributed.py checks the 2-rank run itself); here the
blocks are computed in one process, with the numpy and the torch backends, on data full of exact ties."""

from __future__ import annotations

import numpy as np
import pytest

from difflens.metrics import knn
from difflens.metrics.knn import backend, radii
from difflens.metrics.knn.cross import KnnCounts, cross
from difflens.metrics.knn.exact import prepare, prepare_pair


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Gaussian float32; float64 far from the origin (float32 rounding of the input counts); small
    integers (exact ties: distances equal to radii, duplicates at distance 0)."""
    rng = np.random.default_rng(3)
    return {
        "gauss": (rng.standard_normal((150, 12)).astype(np.float32),
                  (rng.standard_normal((110, 12)) * 1.2 + 0.2).astype(np.float32)),
        "far": (rng.standard_normal((70, 6)) + 1e3, rng.standard_normal((64, 6)) * 0.8 + 1e3),
        "ties": (rng.integers(0, 4, (90, 3)).astype(np.float32),
                 rng.integers(0, 5, (75, 3)).astype(np.float32)),
    }


def _splits(n: int) -> list[list[range]]:
    """Ways to cut range(n) into contiguous blocks: halves, uneven thirds, single rows at the ends, and an
    empty block (a rank with no rows)."""
    return [[range(0, n // 2), range(n // 2, n)],
            [range(0, 7), range(7, n - 30), range(n - 30, n)],
            [range(0, 1), range(1, n - 1), range(n - 1, n), range(n, n)]]


def _brute_sq_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared (k+1)-th smallest distance, self included, every pair by differences in float64."""
    x = x.astype(np.float64)
    d2 = np.stack([np.einsum("ij,ij->i", x - row, x - row) for row in x], axis=1)
    return np.sort(d2, axis=1)[:, k]


@pytest.mark.parametrize("torch_backend", [False, True])
def test_radii_of_row_blocks_equal_the_whole_set_bit_for_bit(torch_backend: bool) -> None:
    ops = backend.TorchOps("cpu") if torch_backend else backend.NumpyOps()
    for name, (real, _) in _cases().items():
        fs = prepare(real, "Real")
        with backend.strict_matmul(ops):
            whole = radii.sq_radii(ops, fs, [3, 5], block=32)          # triangle of tiles
            for split in _splits(fs.n):
                parts = [radii.sq_radii(ops, fs, [3, 5], block=32, rows=r) for r in split]  # row strips
                for k in (3, 5):
                    # exact float64 values of one (row, column) pair each: equal bits, however split
                    assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k]), (name, k)
        for k in (3, 5):  # and they are the true radii (the brute force sums in another order: 1e-12)
            np.testing.assert_allclose(whole[k], _brute_sq_radii(fs.src, k), rtol=1e-12, atol=1e-12)


def test_row_block_radii_fall_back_exactly_when_lists_are_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """SLACK=0: most windows reach the end of the list, so rows go through the exact full-row fallback."""
    monkeypatch.setattr(radii, "SLACK", 0)
    real, _ = _cases()["ties"]
    fs = prepare(real, "Real")
    ops = backend.NumpyOps()
    whole = radii.sq_radii(ops, fs, [3], block=16)[3]
    parts = [radii.sq_radii(ops, fs, [3], block=16, rows=r)[3] for r in _splits(fs.n)[1]]
    assert np.array_equal(np.concatenate(parts), whole)
    np.testing.assert_allclose(whole, _brute_sq_radii(fs.src, 3), rtol=1e-12, atol=1e-12)


def test_counts_of_row_blocks_merge_to_the_single_process_metrics() -> None:
    ops = backend.NumpyOps()
    for name, (real, fake) in _cases().items():
        real_fs, fake_fs = prepare_pair(real, fake)
        rr = knn.knn_radii_many(real, [3, 5], block_size=32)
        rf = knn.knn_radii(fake, 3, block_size=32)
        want = knn.prdc(real, fake, block_size=32)
        for split in _splits(real_fs.n):
            total = None
            for rows in split:
                c = cross(ops, real_fs, fake_fs, rr[3], rf, rr[5], 32, rows=rows).counts()
                total = c if total is None else total.merge(c)
            assert total is not None
            # == on floats: the merged counts are the single-process counts, so the ratios are identical
            assert total.summary(real_fs.n, fake_fs.n, 5) == want, (name, [len(r) for r in split])
            # the vector form is what travels in all_reduce_sum_int; it reads back unchanged
            back = total.from_vector(total.to_vector())
            assert back.summary(real_fs.n, fake_fs.n, 5) == want
            assert np.array_equal(back.dens, total.dens) and back.covered == total.covered


def test_counts_merge_is_a_sum_and_keeps_what_was_not_computed() -> None:
    a = KnnCounts(precise=np.array([1, 0, 0]), dens=None, covered=None, recalled=2)
    b = KnnCounts(precise=np.array([0, 0, 1]), dens=None, covered=None, recalled=1)
    m = a.merge(b)
    assert m.precise is not None and m.precise.tolist() == [1, 0, 1]
    assert m.recalled == 3 and m.dens is None and m.covered is None
    assert m.summary(n=4, m=3, k_dc=5) == {"precision": 2 / 3, "recall": 3 / 4}
    assert m.from_vector(m.to_vector()).recalled == 3
