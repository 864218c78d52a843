"""Optional attention supervision for the shapes denoisers (``--attn-weight`` > 0 in ``train``).

Trained on the diffusion loss alone, the tiny denoisers read a caption through its end-of-text and
padding tokens (which, in a causal CLIP text encoder, hold the whole caption), so the maps of the word
tokens say little. To make the shapes world a testbed with KNOWN attention, the shipped denoisers are
fine-tuned with an added term that rewards each colour/shape word's cross-attention for landing on its
object:

    L_attn = mean over layers, heads, words of (1 - sum_x p_w(x) m_w(x) / sum_x p_w(x))

where p_w(x) is the probability with which latent pixel x attends to word w's token and m_w the fraction
of latent cell x covered by the word's object (64x64 mask averaged over 4x4 blocks). This "mass" term is
maximized by a map that puts all of its mass anywhere inside the object, so it trains *peaked* maps: they
point at the object (pointing game) but at the DAAM threshold (0.4 of the peak) they cover only its centre.
The "cover" term is the Kullback-Leibler divergence from the object's coverage distribution to the map,

    L_cover = mean over layers, heads, words of sum_x q_w(x) log(q_w(x) / p'_w(x)),
    q_w = m_w / sum m_w,  p'_w = p_w / sum p_w,

minimal (0) when the map spreads evenly over the object, which is what mIoU at a fixed threshold rewards.
Samples whose caption was dropped (classifier-free guidance) add nothing. The total loss is
L_diffusion + weight * L_attn.
What this means for the checks: the maps of these models are on their objects by construction; the
testbed then proves that difflens captures, aggregates and attributes them correctly (a transposed map,
a wrong layer grid or an off-by-one word would fail), not that attention localizes in large models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from difflens.shapes.world import render_scene, split_seeds

MAX_WORDS = 4


def word_targets(work: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Token positions (n, 4) (-1: none; token = word index + 1 after BOS) and 16x16 coverage (n, 4, 256)
    of the colour and shape words of the ``n`` training scenes; cached in ``work``."""
    path = work / "word-targets.npz"
    if path.exists():
        with np.load(path) as f:
            return f["tokens"], f["cover"]
    tokens = np.full((n, MAX_WORDS), -1, np.int64)
    cover = np.zeros((n, MAX_WORDS, 256), np.float32)
    for i, seed in enumerate(split_seeds("train", n)):
        for j, (wi, _, mask) in enumerate(render_scene(seed).word_masks):
            tokens[i, j] = wi + 1
            cover[i, j] = mask.reshape(16, 4, 16, 4).mean(axis=(1, 3)).reshape(-1)
    np.savez(path, tokens=tokens, cover=cover)
    (work / "word-targets.json").write_text(json.dumps({"n": n}))
    return tokens, cover


AttnLoss = Literal["mass", "cover"]


def attention_loss(probs: list[Any], tokens: Any, cover: Any, keep: Any, kind: AttnLoss = "mass") -> Any:
    """L_attn (``kind`` "mass") or L_cover ("cover") over captured image->text probabilities ``probs``
    (each (B, H, 256, T)); ``tokens`` (B, 4) long, ``cover`` (B, 4, 256), ``keep`` (B,) bool (caption not
    dropped)."""
    import torch

    valid = (tokens >= 0) & keep[:, None]
    if not bool(valid.any()):
        return torch.zeros(())
    idx = tokens.clamp(min=0)
    total = torch.zeros(())
    for p in probs:
        b, h, n, _ = p.shape
        sel = p.gather(3, idx[:, None, None, :].expand(b, h, n, MAX_WORDS))  # (B, H, 256, 4)
        sel = sel / sel.sum(2, keepdim=True).clamp_min(1e-12)
        if kind == "mass":
            per_word = 1 - (sel * cover[:, None].transpose(2, 3)).sum(2)  # (B, H, 4)
        else:
            q = cover / cover.sum(2, keepdim=True).clamp_min(1e-12)  # (B, 4, 256)
            q = q[:, None].transpose(2, 3)  # (B, 1, 256, 4)
            per_word = (torch.xlogy(q, q) - q * torch.log(sel.clamp_min(1e-12))).sum(2)  # (B, H, 4)
        total = total + (per_word * valid[:, None]).sum() / (valid.sum() * h)
    return total / len(probs)


class CaptureCrossAttn:
    """UNet cross-attention (``attn2``) that computes its probabilities explicitly and keeps them in
    ``store`` as (B, H, N, T); the output equals the standard processor's (same formula)."""

    def __init__(self, store: list[Any]) -> None:
        self.store = store

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, **_: Any) -> Any:
        import torch

        b, n, _ = hidden_states.shape
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)
        self.store.append(probs.view(b, attn.heads, n, -1))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


class CollapsedZeros:
    """Training-only SD3 joint attention in which the ``T5_ROWS`` identical zero text rows are one row
    whose attention logit gets + ln(T5_ROWS): identical keys/values give identical softmax terms, so this
    equals the full computation (checked in ``train.stage_mmdit``) at a fraction of the cost."""

    def __init__(self, rows: int, store: list[Any] | None = None) -> None:
        self.bias = math.log(rows)
        self.store = store  # when given: keep the image->text probabilities (B, H, N_img, T) here

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, **_: Any) -> Any:
        import torch
        import torch.nn.functional as F

        b, n = hidden_states.shape[:2]
        h = attn.heads

        def split(x: Any) -> Any:
            return x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2)

        q = torch.cat([split(attn.to_q(hidden_states)), split(attn.add_q_proj(encoder_hidden_states))], 2)
        k = torch.cat([split(attn.to_k(hidden_states)), split(attn.add_k_proj(encoder_hidden_states))], 2)
        v = torch.cat([split(attn.to_v(hidden_states)), split(attn.add_v_proj(encoder_hidden_states))], 2)
        mask = torch.zeros(k.shape[2], dtype=q.dtype)
        mask[-1] = self.bias
        mask = mask.view(1, 1, 1, -1)
        if self.store is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, dim=-1)
            self.store.append(probs[:, :, :n, n:])
            out = probs @ v
        out = out.transpose(1, 2).reshape(b, -1, q.shape[-1] * h)
        img, txt = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            txt = attn.to_add_out(txt)
        return attn.to_out[1](attn.to_out[0](img)), txt
