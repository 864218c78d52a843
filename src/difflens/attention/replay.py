"""Side computation: replay a layer's query/key path to get the attention probabilities SDPA never exposes.

For the rows of the conditional branch, and for image queries only, this recomputes what the layer's
processor computes before its attention kernel (projections, fused QKV, q/k norms, RoPE, scale, key mask)
and takes the softmax over **all** keys (Vaswani et al. 2017, eq. 1: softmax(q k^T * scale + mask)):

* cross attention (UNet, PixArt): keys are the text sequence;
* MMDiT (SD3 ``[image, text]``, Flux ``[text, image]``): keys are image and text tokens, so the mass on
  text keys is below 1. We report that text mass and also the text-renormalized probabilities
  p(t | q) / sum_text p(. | q), per head, then averaged.

The probabilities of the kept tokens come out of ``scaled_dot_product_attention`` run on one-hot value
columns (exact: the output is sum_k p_k v_k), so no query x key matrix is materialized; the explicit
softmax runs on check calls only, where the same probabilities times V, through the output projection,
must give back the layer's real output (the image part for MMDiT). Everything runs in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from difflens.errors import DifflensError

#: Processors that apply attn.norm_q / attn.norm_k on the cross-attention path.
_CROSS_WITH_NORMS = frozenset({"AttnProcessor2_0", "FusedAttnProcessor2_0"})
#: Processors that use ``attn.scale`` (others use SDPA's default 1/sqrt(head_dim)).
_USES_ATTN_SCALE = frozenset({"AttnProcessor", "XFormersAttnProcessor", "SlicedAttnProcessor",
                              "XFormersJointAttnProcessor"})
DEFAULT_CHUNK_BYTES = 256 * 2**20


@dataclass
class ReplayResult:
    """One layer call, conditional rows averaged, heads averaged; native token grid (n_queries)."""

    columns: Any                # (n_queries, C) float32: T token probabilities [, text mass, T renormalized]
    n_tokens: int
    head_entropy: Any | None    # (heads, T) spatial entropy per head (native grid), when asked
    n_queries: int
    sum_error: float            # max |sum over all keys - 1|
    route_error: float | None   # max |fast route - explicit softmax| on the kept tokens, when checked
    out_error: float | None     # max |recomputed - real| / max |real| (image part), when checked
    transient_bytes: int        # largest score/probability chunk held at once (x2 for scores+probs)

    @property
    def token_probs(self) -> Any:
        """(n_queries, T) mean probability of each kept token."""
        return self.columns[:, :self.n_tokens]

    @property
    def text_mass(self) -> Any | None:
        """(n_queries,) share of probability on text keys (joint attention), else None."""
        return self.columns[:, self.n_tokens] if self.columns.shape[1] > self.n_tokens else None

    @property
    def renorm(self) -> Any | None:
        """(n_queries, T) text-renormalized probabilities (joint attention), else None."""
        return self.columns[:, self.n_tokens + 1:] if self.columns.shape[1] > self.n_tokens else None


def _heads_view(x: Any, heads: int, head_dim: int) -> Any:
    b, n, _ = x.shape
    return x.view(b, n, heads, head_dim).transpose(1, 2)


def _onehot_values(n_keys: int, width: int, keys: Any, text_start: int, text_len: int, joint: bool,
                   device: Any) -> tuple[Any, int]:
    """Value columns whose attention output is a probability: one column per kept token (one-hot on its
    key), for joint attention one column over the text keys (text mass), and one over all keys (the sum,
    which must be 1). Padded to a multiple of ``width`` (the head dim, so SDPA keeps its fused kernel)."""
    import torch

    T = int(keys.numel())
    C = T + (1 if joint else 0) + 1
    padded = -(-C // width) * width
    vals = torch.zeros(n_keys, padded, dtype=torch.float32, device=device)
    vals[keys, torch.arange(T, device=device)] = 1.0
    if joint:
        vals[text_start:text_start + text_len, T] = 1.0
    vals[:, C - 1] = 1.0
    return vals, C


def _use_onehot_route(n_columns: int, head_dim: int) -> bool:
    """SDPA on one-hot values costs one attention pass per ``head_dim`` columns; the explicit softmax
    costs about one pass at tiny head dims and 2-3 at real ones (it materializes the probabilities)."""
    passes = -(-n_columns // head_dim)
    return passes == 1 or (passes == 2 and head_dim >= 32)


def _attend(q: Any, k: Any, v: Any | None, scale: float, mask: Any | None, text_start: int, text_len: int,
            token_keys: Any, *, joint: bool, head_entropy: bool, chunk_bytes: int) -> dict[str, Any]:
    """Probabilities of image queries ``q`` (B, H, Nq, d) over keys ``k`` (B, H, Nk, d), reduced per token.

    ``mask`` broadcasts to (B, H, Nq, Nk): boolean (True = attend) or additive. ``token_keys`` are the
    kept tokens' indices in the text sequence, which starts at key ``text_start``. Returns ``columns``
    (Nq, C), the mean over heads and rows of [p(token) for kept tokens] (C = T), followed for joint
    attention by the text mass and the text-renormalized p(token) / mass (C = 2T + 1).

    Two routes give the same probabilities. One-hot route: softmax(q k^T * scale + mask) times one-hot
    value columns (:func:`_onehot_values`) is exactly the probability of each kept token, computed by
    ``scaled_dot_product_attention`` without materializing the (Nq x Nk) matrix, one attention pass per
    ``head_dim`` columns. Explicit route: scores and softmax in head chunks under ``chunk_bytes``. The
    one-hot route is used when it is cheaper (few columns for the head dim). When ``v`` (the layer's
    values) is given (check calls), the explicit route always runs: it checks the sum over all keys,
    compares with the one-hot route, and gives probabilities x V for the output check.
    """
    import torch
    import torch.nn.functional as F

    from difflens.attention.measures import spatial_entropy

    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    keys = token_keys + text_start
    T = int(keys.numel())
    qf, kf = q.float(), k.float()
    mf = None
    if mask is not None:
        mf = mask if mask.dtype == torch.bool else mask.float()
    n_cols = T + (1 if joint else 0) + 1
    pt = None
    mass = None
    sum_err = 0.0
    transient = 0
    onehot = _use_onehot_route(n_cols, d)
    probe = None
    if onehot:
        vals, C = _onehot_values(Nk, d, keys, text_start, text_len, joint, q.device)
        outs = []
        for c0 in range(0, vals.shape[1], d):
            vj = vals[:, c0:c0 + d].expand(B, H, Nk, d)
            outs.append(F.scaled_dot_product_attention(qf, kf, vj, attn_mask=mf, dropout_p=0.0, scale=scale))
        probs = torch.cat(outs, dim=-1)[..., :C] if len(outs) > 1 else outs[0][..., :C]   # (B, H, Nq, C)
        pt = probs[..., :T]
        mass = probs[..., T:T + 1] if joint else None
        sum_err = float((probs[..., C - 1] - 1.0).abs().max())
        transient = 4 * B * H * Nq * vals.shape[1] + 4 * Nk * vals.shape[1]
    elif v is not None:
        # Check call on the explicit route: probe the one-hot route on its first head_dim tokens.
        n_probe = min(T, d)
        vals = torch.zeros(Nk, d, dtype=torch.float32, device=q.device)
        vals[keys[:n_probe], torch.arange(n_probe, device=q.device)] = 1.0
        probe = F.scaled_dot_product_attention(qf, kf, vals.expand(B, H, Nk, d), attn_mask=mf, dropout_p=0.0,
                                               scale=scale)[..., :n_probe]
    route_err = None
    pv = None
    if pt is None or v is not None:
        per_head_bytes = B * Nq * Nk * 4
        hc = max(1, min(H, chunk_bytes // max(per_head_bytes, 1)))
        pts, masses, pvs = [], [], []
        for h0 in range(0, H, hc):
            h1 = min(H, h0 + hc)
            s = torch.matmul(qf[:, h0:h1], kf[:, h0:h1].transpose(-1, -2)).mul_(scale)
            if mf is not None:
                m = mf[:, h0:h1] if mf.shape[1] == H and hc != H else mf
                s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s.add_(m)
            p = s.softmax(dim=-1)
            del s
            sum_err = max(sum_err, float((p.sum(-1) - 1.0).abs().max()))
            pts.append(p.index_select(-1, keys))
            if joint:
                masses.append(p[..., text_start:text_start + text_len].sum(-1, keepdim=True))
            if v is not None:
                pvs.append(torch.matmul(p, v[:, h0:h1].float()))
            del p
        transient = max(transient, 2 * hc * per_head_bytes)
        explicit_pt = torch.cat(pts, 1) if len(pts) > 1 else pts[0]
        if pt is None:
            pt = explicit_pt
            mass = (torch.cat(masses, 1) if len(masses) > 1 else masses[0]) if joint else None
            if probe is not None:
                route_err = float((explicit_pt[..., :probe.shape[-1]] - probe).abs().max())
        else:
            route_err = float((explicit_pt - pt).abs().max())
        if v is not None:
            pv = torch.cat(pvs, 1)
    if joint:
        per_head = torch.cat([pt, mass, pt / mass.clamp_min(1e-30)], dim=-1)
    else:
        per_head = pt
    return {
        "columns": per_head.sum(dim=(0, 1)).div_(B * H),
        "head_entropy": (spatial_entropy(pt.permute(0, 1, 3, 2).unsqueeze(-1)).float().mean(0)
                         if head_entropy else None),
        "sum_error": sum_err, "route_error": route_err, "pv": pv, "transient_bytes": transient,
    }


def _rel_err(recomputed: Any, real: Any) -> float:
    real = real.float()
    denom = float(real.abs().max())
    return float((recomputed.float() - real).abs().max()) / max(denom, 1e-12)


def _bool_or_additive_mask(mask: Any, rows: slice, q_slice: slice | None) -> Any:
    """A Flux/dispatch mask (B, [1|H], Nq_all, Nk) or (B, Nk) -> 4-D, conditional rows, image query rows."""
    m = mask
    if m.ndim == 2:
        m = m[:, None, None, :]
    elif m.ndim == 3:
        m = m[:, None]
    m = m[rows] if m.shape[0] > 1 else m
    if q_slice is not None and m.shape[-2] > 1:
        m = m[..., q_slice, :]
    return m


def replay(kind: str, processor: str, attn: Any, call: dict[str, Any], output: Any, rows: slice,
           token_keys: Any, text_len: int | None = None, *, check: bool = False, head_entropy: bool = False,
           chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ReplayResult:
    """Replay one call of an attention layer.

    ``call`` holds the processor's arguments by name (hidden_states, encoder_hidden_states,
    attention_mask, image_rotary_emb, temb); ``output`` is what the original processor returned; ``rows``
    selects the conditional branch in the batch; ``token_keys`` (LongTensor) are the kept tokens' indices
    in the text sequence; ``text_len`` is needed for Flux single-stream blocks (text is part of
    hidden_states there).
    """
    if kind == "cross":
        return _replay_cross(processor, attn, call, output, rows, token_keys, check, head_entropy,
                             chunk_bytes)
    if kind == "joint_image_first":
        return _replay_joint_image_first(processor, attn, call, output, rows, token_keys, check, head_entropy,
                                         chunk_bytes)
    if kind in ("joint_text_first", "single_text_first"):
        if kind == "single_text_first" and text_len is None:
            raise DifflensError("a Flux single-stream layer was called outside a denoiser call.",
                                "capture attention through the pipeline call")
        return _replay_text_first(kind, attn, call, output, rows, token_keys, text_len, check, head_entropy,
                                  chunk_bytes)
    raise DifflensError(f"unknown attention layer kind {kind!r}.", "this is a difflens bug; please report it")


def _finish(res: dict[str, Any], n_queries: int, n_tokens: int, out_error: float | None) -> ReplayResult:
    return ReplayResult(columns=res["columns"], n_tokens=n_tokens, head_entropy=res["head_entropy"],
                        n_queries=n_queries, sum_error=res["sum_error"], route_error=res["route_error"],
                        out_error=out_error, transient_bytes=res["transient_bytes"])


def _replay_cross(processor: str, attn: Any, call: dict[str, Any], output: Any, rows: slice, token_keys: Any,
                  check: bool, head_entropy: bool, chunk_bytes: int) -> ReplayResult:
    hs = call["hidden_states"]
    enc = call.get("encoder_hidden_states")
    mask = call.get("attention_mask")
    residual = hs
    if getattr(attn, "spatial_norm", None) is not None:
        hs = attn.spatial_norm(hs, call.get("temb"))
    ndim4 = hs.ndim == 4
    if ndim4:
        b, c, hh, ww = hs.shape
        hs = hs.view(b, c, hh * ww).transpose(1, 2)
    batch = hs.shape[0]
    n_keys = enc.shape[1]
    heads = attn.heads
    if mask is not None:
        mask = attn.prepare_attention_mask(mask, n_keys, batch)        # (B*heads, Mq, Nk)
        mask = mask.view(batch, heads, -1, mask.shape[-1])[rows]
    if getattr(attn, "group_norm", None) is not None:
        hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
    hs, enc = hs[rows], enc[rows]
    if attn.norm_cross:
        enc = attn.norm_encoder_hidden_states(enc)
    q = attn.to_q(hs)
    v = None
    if processor == "FusedAttnProcessor2_0":
        k, v = attn.to_kv(enc).split(attn.to_kv.out_features // 2, dim=-1)
    else:
        k = attn.to_k(enc)
        if check:
            v = attn.to_v(enc)
    head_dim = k.shape[-1] // heads
    q, k = _heads_view(q, heads, head_dim), _heads_view(k, heads, head_dim)
    v = _heads_view(v, heads, head_dim) if check else None
    if processor in _CROSS_WITH_NORMS:
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
    scale = attn.scale if processor in _USES_ATTN_SCALE else 1.0 / math.sqrt(head_dim)
    res = _attend(q, k, v, scale, mask, 0, n_keys, token_keys, joint=False,
                  head_entropy=head_entropy, chunk_bytes=chunk_bytes)
    err = None
    if check:
        o = res["pv"].transpose(1, 2).reshape(q.shape[0], -1, heads * head_dim).to(v.dtype)
        o = attn.to_out[1](attn.to_out[0](o))
        if ndim4:
            o = o.transpose(-1, -2).reshape(o.shape[0], c, hh, ww)
        if attn.residual_connection:
            o = o + residual[rows]
        o = o / attn.rescale_output_factor
        err = _rel_err(o, output[rows])
    return _finish(res, q.shape[2], int(token_keys.numel()), err)


def _replay_joint_image_first(processor: str, attn: Any, call: dict[str, Any], output: Any, rows: slice,
                              token_keys: Any, check: bool, head_entropy: bool,
                              chunk_bytes: int) -> ReplayResult:
    import torch

    hs = call["hidden_states"][rows]
    enc = call["encoder_hidden_states"][rows]
    heads = attn.heads
    if processor == "FusedJointAttnProcessor2_0":
        q, k, v = torch.split(attn.to_qkv(hs), attn.to_qkv.out_features // 3, dim=-1)
        _, ek, ev = torch.split(attn.to_added_qkv(enc), attn.to_added_qkv.out_features // 3, dim=-1)
        head_dim = k.shape[-1] // heads
        q = _heads_view(q, heads, head_dim)
        k = _heads_view(torch.cat([k, ek], dim=1), heads, head_dim)
        v = _heads_view(torch.cat([v, ev], dim=1), heads, head_dim)
    else:
        q, k = attn.to_q(hs), attn.to_k(hs)
        head_dim = k.shape[-1] // heads
        q, k = _heads_view(q, heads, head_dim), _heads_view(k, heads, head_dim)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        ek = _heads_view(attn.add_k_proj(enc), heads, head_dim)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        k = torch.cat([k, ek], dim=2)
        v = None
        if check:   # values only to check the reproduction of the layer output
            v = torch.cat([_heads_view(attn.to_v(hs), heads, head_dim),
                           _heads_view(attn.add_v_proj(enc), heads, head_dim)], dim=2)
    n_img = q.shape[2]
    scale = attn.scale if processor in _USES_ATTN_SCALE else 1.0 / math.sqrt(head_dim)
    res = _attend(q, k, v if check else None, scale, None, n_img, enc.shape[1], token_keys, joint=True,
                  head_entropy=head_entropy, chunk_bytes=chunk_bytes)
    err = None
    if check:
        o = res["pv"].transpose(1, 2).reshape(q.shape[0], -1, heads * head_dim).to(v.dtype)
        o = attn.to_out[1](attn.to_out[0](o))
        real = output[0] if isinstance(output, tuple) else output
        err = _rel_err(o, real[rows])
    return _finish(res, n_img, int(token_keys.numel()), err)


def _replay_text_first(kind: str, attn: Any, call: dict[str, Any], output: Any, rows: slice, token_keys: Any,
                       text_len: int | None, check: bool, head_entropy: bool,
                       chunk_bytes: int) -> ReplayResult:
    import torch
    from diffusers.models.embeddings import apply_rotary_emb

    hs = call["hidden_states"][rows]
    enc = call.get("encoder_hidden_states")
    double = kind == "joint_text_first"
    if double:
        enc = enc[rows]
    n_txt = enc.shape[1] if double else int(text_len)
    q_in = hs if double else hs[:, n_txt:]                    # image queries only ([text, image] if single)
    v = ev = None
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hs).chunk(3, dim=-1)
        q = q if double else q[:, n_txt:]
        if double:
            _, ek, ev = attn.to_added_qkv(enc).chunk(3, dim=-1)
    else:
        q, k = attn.to_q(q_in), attn.to_k(hs)
        if check:
            v = attn.to_v(hs)
        if double:
            ek = attn.add_k_proj(enc)
            if check:
                ev = attn.add_v_proj(enc)
    hd = attn.head_dim
    q, k = q.unflatten(-1, (-1, hd)), k.unflatten(-1, (-1, hd))   # (B, N, H, d)
    q, k = attn.norm_q(q), attn.norm_k(k)
    if double:
        k = torch.cat([attn.norm_added_k(ek.unflatten(-1, (-1, hd))), k], dim=1)
    if check:
        v = v.unflatten(-1, (-1, hd))
        if double:
            v = torch.cat([ev.unflatten(-1, (-1, hd)), v], dim=1)
    rope = call.get("image_rotary_emb")
    if rope is not None:
        cos, sin = rope
        q = apply_rotary_emb(q, (cos[n_txt:], sin[n_txt:]), sequence_dim=1)
        k = apply_rotary_emb(k, rope, sequence_dim=1)
    q, k = q.transpose(1, 2), k.transpose(1, 2)               # (B, H, N, d)
    v = v.transpose(1, 2) if check else None
    mask = call.get("attention_mask")
    if mask is not None:
        mask = _bool_or_additive_mask(mask, rows, slice(n_txt, None))
    scale = 1.0 / math.sqrt(hd)
    res = _attend(q, k, v, scale, mask, 0, n_txt, token_keys, joint=True,
                  head_entropy=head_entropy, chunk_bytes=chunk_bytes)
    err = None
    if check:
        o = res["pv"].transpose(1, 2).flatten(2).to(v.dtype)
        if double:
            o = attn.to_out[1](attn.to_out[0](o))
            err = _rel_err(o, output[0][rows])
        else:
            err = _rel_err(o, output[rows][:, n_txt:])
    return _finish(res, q.shape[2], int(token_keys.numel()), err)
