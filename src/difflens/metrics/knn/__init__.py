"""Exact k-NN manifold metrics: precision/recall (Kynkaanniemi et al. 2019) and density/coverage
(Naeem et al. 2020), computed tile by tile (memory O(block^2) per tile, never N x N), in one process or
with the rows shared out over the ranks of a torch.distributed run. One engine:

- :mod:`.exact`: feature sets, exact float64 distances, the float32 error bound
- :mod:`.backend`: numpy (CPU) and torch (CUDA/MPS) tile operations
- :mod:`.radii`: exact k-th neighbour distances of a block of rows
- :mod:`.cross`: the real x fake pass of a block of real rows -> mergeable :class:`KnnCounts`
- :mod:`.compute`: :func:`prdc`, :func:`knn_radii` and their distributed forms (shard rows, sum counts)
- :mod:`.bootstrap`: :func:`prdc_bootstrap`, every resample of the fake set from one pass

Definitions (radius r_k(x) = distance from x to its k-th nearest neighbour in its own set, self excluded,
taken as the (k+1)-th smallest distance counting the self-distance 0 -- what torch-fidelity's
``kthvalue(k + 1)`` and prdc's ``get_kth_value(k + 1)`` do -- so duplicates count as neighbours at 0):

- precision (k=3) = (1/M) sum_j 1[ exists i: d(f_j, r_i) <= r_3(r_i) ]
- recall    (k=3) = (1/N) sum_i 1[ exists j: d(r_i, f_j) <= r_3(f_j) ]
- density   (k=5) = 1/(k M) sum_j sum_i 1[ d(f_j, r_i) < r_5(r_i) ]
- coverage  (k=5) = (1/N) sum_i 1[ min_j d(r_i, f_j) < r_5(r_i) ]

Exactness (the one argument; every path, sharded or not, relies on it alone). Every comparison is
decided on the exact distance ``sqrt(sum((a - b)^2))`` evaluated in float64 from the input values (exactly
0 for duplicates; the same value for (a, b) and (b, a)). Speed comes from float32 matrix products: a tile
of squared distances ``||a||^2 + ||b||^2 - 2 a.b`` is one float32 GEMM of augmented vectors
``[-2a, 1, ||a||^2 - offset] . [b, ||b||^2, 1]``, whose error has the rigorous bound
``tol = 1.25 (gamma_{D+2} + 8u) (2 max|a| max|b| + max||a||^2 + max||b||^2 + 2 max offset)``
(``u = 2^-24``, ``gamma_n = n u / (1 - n u)``: the worst case of any summation order, so it holds for every
BLAS and for cuBLAS with TF32 off). Comparisons farther than ``tol`` from their threshold are decided by
the tile; the rest (typically a few per thousand rows) are recomputed in float64. A radius is certified by a
gap test on the row's list of smallest tile values (the window of entries within 2 tol of each other
around position k+1 is recomputed exactly; a window that reaches the end of the list falls back to an exact
scan of the row). Hence every radius is an exact float64 value and every comparison is a function of one
(row, column) pair alone: the results are those of exact arithmetic, independent of block size, device,
BLAS, and of which rows are computed together. So a block of rows can be computed anywhere: the metrics
are counts over rows (fake samples hit by some real ball, balls holding each fake sample, real rows
covered or recalled), and the counts of disjoint row blocks add up (:meth:`KnnCounts.merge`, int64) to the
counts of the whole set. The distributed run only shards the rows (radii of each rank's block, gathered
unchanged; the real x fake pass of each rank's real rows) and sums the counts: bit for bit the
single-process values. They equal torch-fidelity's ``prc`` and prdc's ``compute_prdc`` wherever their own
float32 rounding does not flip a near-tie (they disagree with each other there: torch-fidelity compares
float32 ``cdist`` values, prdc float64 distances rounded to float32).

Algorithm and cost. Radii: the upper triangle of tiles of each set (half the flops of an N x N product);
diagonal tiles first seed every row's list of the k+1+slack smallest values, then each off-diagonal tile
feeds its rows and its columns, keeping only entries below the row's current list maximum (a sparse
filter: a few entries per row and tile); a shard of rows takes its strip against every column instead.
Cross pass: one real x fake product; density, coverage and precision come from the sparse set of pairs
within the real radius (+tol), recall from a row-wise minimum. Flops: ``2 (D+2) (N^2/2 + M^2/2 + N M)``.

Backends: numpy (OpenBLAS sgemm) on ``device="cpu"`` -- torch is not imported, which keeps the peak
memory small; torch on ``"cuda"``/``"cuda:N"``/``"mps"`` (:func:`difflens.numerics.strict_float32`
inside the computation).
"""

from __future__ import annotations

from difflens.metrics.knn.bootstrap import prdc_bootstrap
from difflens.metrics.knn.compute import (
    ALL_METRICS,
    distributed_knn_radii,
    distributed_prdc,
    knn_radii,
    knn_radii_many,
    prdc,
)
from difflens.metrics.knn.cross import KnnCounts

__all__ = ["ALL_METRICS", "KnnCounts", "distributed_knn_radii", "distributed_prdc", "knn_radii",
           "knn_radii_many", "prdc", "prdc_bootstrap"]
