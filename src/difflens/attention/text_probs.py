"""Image->text probabilities from a tapped attention-kernel call (:class:`difflens.attention.lse.TapRecord`):
the kernel's q, k and log-sum-exp give, for the text keys j only,

    p(j | i) = exp(scale * q_i . k_j + m_ij - lse_i)                      (Vaswani et al. 2017, eq. 1)

an N_image x N_text product per head instead of a second N_image x N_all attention pass.

:func:`ranges_for` places the image queries and text keys in the kernel's sequences for each layer kind;
:func:`lse_columns` computes the per-token planes the aggregator takes. Text keys that repeat one key to the
end of the text sequence (the zero-padded T5 positions of an SD3 pipeline run without its T5 encoder: 256
identical keys in the shapes-world MMDiT) are scored once and weighted by their count
(:func:`trailing_run`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from difflens.attention.lse import TapRecord

_LOG2E = 1.4426950408889634       # log2(e)
#: A run of identical trailing text keys shorter than this is scored key by key (not worth the check).
MIN_RUN = 8
#: Cross attention scores only the kept tokens' keys, p = exp(s - lse), once a layer's first call found
#: |sum_j exp(s_ij - lse_i) - 1| at most this (the kernel's lse is the natural log-sum-exp of these scores;
#: float32 on CPU: ~1e-7); otherwise every call takes the exactly normalized softmax over all text keys.
LSE_AGREEMENT = 1e-4


@dataclass(frozen=True)
class Ranges:
    """Where the image queries and the text keys sit in the kernel's sequences."""

    queries: slice
    text: slice
    n_queries_all: int
    n_keys_all: int
    joint: bool

    @property
    def n_queries(self) -> int:
        """Image queries."""
        return len(range(*self.queries.indices(self.n_queries_all)))

    @property
    def n_text(self) -> int:
        """Text keys."""
        return len(range(*self.text.indices(self.n_keys_all)))


def ranges_for(kind: str, call: dict[str, Any], text_len: int | None) -> Ranges | None:
    """Image-query and text-key ranges for a layer ``kind`` (DESIGN.md 4: SD3 ``[image, text]``, Flux
    ``[text, image]`` in double and single blocks; cross attention: image queries, text keys)."""
    hs = call.get("hidden_states")
    enc = call.get("encoder_hidden_states")
    if hs is None:
        return None
    n_hs = int(hs.shape[2] * hs.shape[3]) if hs.ndim == 4 else int(hs.shape[1])
    if kind == "cross":
        if enc is None:
            return None
        t = int(enc.shape[1])
        return Ranges(slice(0, n_hs), slice(0, t), n_hs, t, False)
    if kind == "joint_image_first":
        if enc is None:
            return None
        t = int(enc.shape[1])
        return Ranges(slice(0, n_hs), slice(n_hs, n_hs + t), n_hs + t, n_hs + t, True)
    if kind == "joint_text_first":
        if enc is None:
            return None
        t = int(enc.shape[1])
        return Ranges(slice(t, t + n_hs), slice(0, t), t + n_hs, t + n_hs, True)
    if kind == "single_text_first":
        if text_len is None:
            return None
        return Ranges(slice(int(text_len), n_hs), slice(0, int(text_len)), n_hs, n_hs, True)
    return None


def _stacked_mask(recs: Sequence[TapRecord], rows: slice, rng: Ranges, kept: Any | None, B: int,
                  H: int) -> Any:
    """The records' masks at the image queries and text keys (``kept``: those keys only), keys-major, as
    one additive bias (n B H | 1, T | K | 1, Nq | 1) for the stacked (record, row, head) batch."""
    import torch

    ms = []
    for rec in recs:
        m = rec.mask
        while m.dim() < 4:
            m = m.unsqueeze(0)
        ms.append(m)
    m = ms[0].unsqueeze(0) if len(ms) == 1 else torch.stack(ms)                # (n, b, h, q, k)
    if m.shape[1] > 1:
        m = m[:, rows]
    if m.shape[3] > 1:
        m = m[:, :, :, rng.queries]
    if m.shape[4] > 1:
        m = m[..., rng.text]
    m = m.float().transpose(-1, -2)                                              # (n, b, h, T|1, Nq|1)
    if kept is not None and m.shape[-2] > 1:
        m = m.index_select(-2, kept)
    if m.shape[0] * m.shape[1] * m.shape[2] == 1:       # one mask for every record, row and head: broadcast
        return m.reshape(1, *m.shape[3:])
    return m.expand(len(recs), B, H, *m.shape[3:]).reshape(len(recs) * B * H, *m.shape[3:])


def _stacked_rows(recs: Sequence[TapRecord], attr: str, rows: slice, seq: slice, layout: str) -> Any:
    """:func:`_flat_rows` of each record's ``attr`` tensor, concatenated along the rows: the records'
    tensors stacked whole (one copy), then sliced and flattened (``"rds"`` as the transpose of ``"rsd"``)."""
    import torch

    if len(recs) == 1:
        return _flat_rows(getattr(recs[0], attr), rows, seq, layout)
    st = torch.stack([getattr(rec, attr) for rec in recs])                      # (n, B, H, L[, d])
    v = st[:, rows, :, seq]
    if v.dtype != torch.float32:
        v = v.float()
    n_rows = v.shape[0] * v.shape[1] * v.shape[2]
    if layout == "r1s":
        return v.reshape(n_rows, 1, v.shape[3])
    v = v.reshape(n_rows, v.shape[3], v.shape[4])
    return v if layout == "rsd" else v.transpose(1, 2)


def lse_columns(rec: TapRecord | Sequence[TapRecord], rng: Ranges, rows: slice, token_keys: Any, *,
                head_entropy: bool, chunk_bytes: int, drift: bool = True,
                memo: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Per-token planes from a tapped call: ``planes`` (C, Nq) = mean over the conditional rows and heads
    of [p(kept token)] (cross, C = T) or [p(kept token), text mass, p(kept token) / text mass] (joint,
    C = 2T + 1), the transpose of :func:`difflens.attention.replay._attend`'s columns. None when the
    kernel's sequence lengths do not match the layer's layout.

    ``rec`` may also be a sequence of n records of the same shapes (calls deferred by the capture: several
    layers and steps of a small model scored as one batch); then ``planes`` is (n, C, Nq), one stack per
    record, and the batch is computed whole (the caller keeps it under ``chunk_bytes``).

    Joint attention: ``p = exp(scale k_text . q - lse)``, the scores and the subtraction in one ``baddbmm``
    per (row x head) batch, over every text key (the text mass needs them all); identical trailing text keys
    are scored once (:func:`trailing_run`; ``memo``, one dict per layer owned by the caller, keeps where the
    run starts). Cross attention on CPU: only the kept tokens' keys are scored, ``p = exp(scale k_kept . q -
    lse)`` (K x Nq per head instead of T x Nq: SD 1.x keeps 10 of 77), once the layer's first call found the
    kernel's lse to agree with the scores (:data:`LSE_AGREEMENT`, kept in ``memo``); on the first call
    (``drift``), without a memo, and on other devices, ``p`` is the softmax of all the text scores (exactly
    normalized, whatever the kernel's lse rounding: up to ~1e-5 from CUDA's half-precision kernels). Computed
    keys-major, (rows x heads, T, Nq), so the result needs no transpose; on small models the number of torch
    calls per layer call, not the arithmetic, is the cost.

    ``lse_drift`` (only when ``drift``: the capture asks on each layer's first call): how far the kernel's
    lse is from these scores' log-sum-exp, seen as max(0, text mass - 1) (joint) or
    max |sum_j exp(s_ij - lse_i) - 1| (cross): float32 rounding of the kernel's exp2 arithmetic, up to ~1e-5
    at large scores on CUDA. It is recorded, not checked: the probabilities summing to 1 is checked with the
    full softmax on each layer's first call (the replay route).
    """
    import torch

    from difflens.attention.measures import spatial_entropy

    single = isinstance(rec, TapRecord)
    recs = [rec] if single else list(rec)
    first = recs[0]
    q, k = first.query, first.key
    if int(q.shape[2]) != rng.n_queries_all or int(k.shape[2]) != rng.n_keys_all:
        return None
    n = len(recs)
    B = len(range(*rows.indices(int(q.shape[0]))))
    H = int(q.shape[1])
    Nq, T = rng.n_queries, rng.n_text              # the kernel's lengths are the layout's (checked above)
    per_record = B * H
    n_rows = n * per_record
    qb = _stacked_rows(recs, "query", rows, rng.queries, "rds")                        # (nBH, d, Nq)
    kb = _stacked_rows(recs, "key", rows, rng.text, "rsd")                             # (nBH, T, d)
    # cross attention on CPU after a first call whose lse agreed with the scores: only the kept tokens' keys
    # are scored, p = exp(s - lse)
    kept_only = (not rng.joint and not drift and q.device.type == "cpu" and memo is not None
                 and memo.get("lse_agrees", False))
    li = (_stacked_rows(recs, "lse", rows, rng.queries, "r1s")                          # (nBH, 1, Nq)
          if rng.joint or drift or kept_only else None)
    keys, weights = token_keys, None
    if kept_only:
        kb = kb.index_select(1, token_keys)                                            # (nBH, K, d)
    if rng.joint and first.mask is None:
        start = trailing_run(kb, memo)
        if start is not None:                  # keys start..T-1 are one key: scored once, counted T - start
            kb = kb[:, :start + 1]
            keys, weights = _run_weights(token_keys, start, T, memo)
    bias, beta = None, 1.0                # what is added to scale k.q: -lse (joint, kept only) and the mask
    if rng.joint or kept_only:
        bias, beta = li, -1.0
    if first.mask is not None:
        m = _stacked_mask(recs, rows, rng, token_keys if kept_only else None, B, H)
        bias, beta = (m, 1.0) if bias is None else (m - li, 1.0)
    # p = exp(x) as exp2(x log2 e): on CPU exp2 and the multiplication take about 0.7x the time of exp (both
    # 1-ulp vectorized). x itself is computed in natural units first, as the kernel computes its lse: folding
    # log2 e into the scale instead would add a rounding proportional to the score (up to ~2e-6 here)
    per_row_bytes = 4 * Nq * int(kb.shape[1])
    rc = n_rows if n > 1 else max(1, min(n_rows, chunk_bytes // max(per_row_bytes, 1)))
    parts, pts, errs = [], [], []
    for r0 in range(0, n_rows, rc):
        whole = rc >= n_rows                                               # one chunk: no slicing calls
        kr, qr = (kb, qb) if whole else (kb[r0:r0 + rc], qb[r0:r0 + rc])
        if bias is None:
            s = torch.bmm(kr, qr).mul_(first.scale)                            # (rows, T, Nq)
        else:
            br = bias if whole or bias.shape[0] == 1 else bias[r0:r0 + rc]
            s = torch.baddbmm(br, kr, qr, beta=beta, alpha=first.scale)
        if rng.joint:
            p = s.mul_(_LOG2E).exp2_()                                     # probabilities of the text keys
            total = (p.sum(1, keepdim=True) if weights is None               # (rows, 1, Nq): the text mass
                     else torch.matmul(weights, p).unsqueeze(1))
            if drift:
                errs.append(total.amax())
            pt = p.index_select(1, keys)
            if whole and n > 1:        # the three parts' per-record means, then one small concatenation
                means = [x.view(n, per_record, *x.shape[1:]).mean(1)
                         for x in (pt, total, pt / total.clamp_min(1e-30))]
                parts.append(torch.cat(means, dim=1))
                continue
            part = torch.cat([pt, total, pt / total.clamp_min(1e-30)], dim=1)
        elif kept_only:
            pt = part = s.mul_(_LOG2E).exp2_()                             # (rows, K, Nq)
        else:
            if drift:
                lr = li if whole else li[r0:r0 + rc]
                errs.append((s - lr).exp_().sum(1).sub_(1.0).abs_().amax())
            p = torch.softmax(s, dim=1)
            if whole and n == 1 and not head_entropy:   # kept rows, mean over rows x heads: one product
                parts.append(torch.matmul(_select_mean(keys, n_rows, T, memo), p.view(n_rows * T, Nq)))
                continue
            pt = part = p.index_select(1, keys)
        pts.append(pt)
        if not whole:
            parts.append(part.sum(0))
        elif n == 1:
            parts.append(part.mean(0))
        else:                                                      # one stack per record: (n, C, Nq)
            parts.append(part.view(n, per_record, *part.shape[1:]).mean(1))
        del s
    planes = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0).div_(n_rows)
    if not single and n == 1:
        planes = planes.unsqueeze(0)
    # a float on CPU; on an accelerator a 0-dim tensor, folded in by the caller without a host sync per call
    drift_value: Any = None
    if errs:
        err = errs[0] if len(errs) == 1 else torch.stack(errs).amax()
        if err.device.type == "cpu":
            drift_value = max(0.0, float(err) - 1.0) if rng.joint else float(err)
            if not rng.joint and memo is not None:
                memo["lse_agrees"] = drift_value <= LSE_AGREEMENT
        else:
            drift_value = (err - 1.0).clamp_min_(0.0) if rng.joint else err
    ent = None
    if head_entropy:
        pt_all = torch.cat(pts, 0) if len(pts) > 1 else pts[0]          # (n B H, T, Nq)
        ent = spatial_entropy(pt_all.view(n * B, H, -1, Nq, 1)).float().mean(0)
    return {"planes": planes, "head_entropy": ent, "lse_drift": drift_value, "n_queries": Nq,
            "transient_bytes": 2 * rc * per_row_bytes}


def trailing_run(kb: Any, memo: dict[str, Any] | None) -> int | None:
    """Where a run of at least :data:`MIN_RUN` text keys equal to the last one starts, in every row and head
    (``kb`` (rows, T, d)), or None. The run is found once per layer and kept in ``memo``; later calls confirm
    it with one ``torch.equal`` (and look again when it fails)."""
    import torch

    T = int(kb.shape[1])
    if T < MIN_RUN:
        return None
    known = memo.get("run_start", -1) if memo is not None else -1
    if known is None:
        return None                                   # looked before: no run in this layer
    if 0 <= known < T and torch.equal(kb[:, known:], kb[:, known:known + 1].expand(-1, T - known, -1)):
        return known
    same = (kb == kb[:, -1:]).all(dim=2).all(dim=0).tolist()        # key j equals the last key everywhere
    n = 0
    while n < T and same[T - 1 - n]:
        n += 1
    start = T - n if n >= MIN_RUN else None
    if memo is not None:
        memo["run_start"] = start
    return start


def _memoized(memo: dict[str, Any] | None, name: str, key: tuple, build: Any) -> Any:
    """``build()``, kept in ``memo[name]`` while ``key`` (what it was built from) stays the same."""
    cached = memo.get(name) if memo is not None else None
    if cached is not None and cached[0] == key:
        return cached[1]
    value = build()
    if memo is not None:
        memo[name] = (key, value)
    return value


def _select_mean(keys: Any, n_rows: int, T: int, memo: dict[str, Any] | None) -> Any:
    """(K, n_rows * T) matrix W with ``W @ p.view(n_rows * T, Nq)`` = ``p[:, keys].mean(0)`` for p
    (n_rows, T, Nq): one matrix product instead of a selection and a mean; kept in ``memo``."""
    import torch

    def build() -> Any:
        w = torch.zeros(int(keys.numel()), n_rows * T, dtype=torch.float32, device=keys.device)
        cols = (torch.arange(n_rows, device=keys.device)[:, None] * T + keys[None, :]).t()   # (K, n_rows)
        return w.scatter_(1, cols, 1.0 / n_rows)

    return _memoized(memo, "select_mean", (n_rows, T, keys.device), build)


def _run_weights(token_keys: Any, start: int, T: int, memo: dict[str, Any] | None) -> tuple[Any, Any]:
    """The kept tokens' rows once keys start..T-1 are one row, and the count of each remaining key (1, and
    T - start for the run); kept in ``memo`` per (start, T)."""
    import torch

    def build() -> tuple[Any, Any]:
        weights = torch.ones(start + 1, dtype=torch.float32, device=token_keys.device)
        weights[start] = T - start
        return token_keys.clamp_max(start), weights

    return _memoized(memo, "run_weights", (start, T, token_keys.device), build)


def _flat_rows(t: Any, rows: slice, seq: slice, layout: str) -> Any:
    """``t[rows, :, seq]`` of a (B, H, L[, d]) tensor as float32 with rows and heads flattened: ``"rsd"``
    (R, L', d), ``"rds"`` (R, d, L') or, for (B, H, L), ``"r1s"`` (R, 1, L'). One ``as_strided`` view when
    the rows and heads flatten to one stride (a single row, or row stride = heads x head stride) and the
    tensor is float32; slicing, a float copy and a reshape otherwise (per-call torch calls are the cost of
    this module on small models)."""
    import torch

    r0, r1, rstep = rows.indices(int(t.shape[0]))
    s0, s1, sstep = seq.indices(int(t.shape[2]))
    nr, ns, H = len(range(r0, r1, rstep)), len(range(s0, s1, sstep)), int(t.shape[1])
    st = t.stride()
    if t.dtype == torch.float32 and rstep == 1 and sstep == 1 and (nr == 1 or st[0] == H * st[1]):
        offset = t.storage_offset() + r0 * st[0] + s0 * st[2]
        if layout == "r1s":
            return t.as_strided((nr * H, 1, ns), (st[1], 1, st[2]), offset)
        size, stride = ((nr * H, ns, int(t.shape[3])), (st[1], st[2], st[3])) if layout == "rsd" else (
            (nr * H, int(t.shape[3]), ns), (st[1], st[3], st[2]))
        return t.as_strided(size, stride, offset)
    v = t[rows, :, seq].float()
    if layout == "r1s":
        return v.reshape(nr * H, 1, ns)
    v = v.reshape(nr * H, ns, int(t.shape[3]))
    return v if layout == "rsd" else v.transpose(1, 2)
