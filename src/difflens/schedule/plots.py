"""PNG plots of a schedule result (matplotlib, Agg backend): every schedule on one log-SNR axis.

All plots read only the result dict of :func:`difflens.schedule.api.analyze_schedules` (a reloaded
``schedule.json`` works too: its nulls are drawn as gaps). Colors follow the order of the specs in every plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

Y_CLIP = 20.0  # |lambda| beyond this (and +-inf) is drawn at the axis edge with a marker


def _arr(values: Any) -> np.ndarray:
    if values is None:
        return np.asarray([], dtype=np.float64)
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _setup() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
                         "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _legend_label(label: str, e: dict[str, Any]) -> str:
    inf = e["inference"]
    pred = {"epsilon": "eps", "v_prediction": "v", "flow_prediction": "flow", "sample": "x0"}.get(
        e["prediction_type"], e["prediction_type"])
    spacing = f", {e['timestep_spacing']}" if e.get("timestep_spacing") else ""
    shift = f", shift {e['shift']:.3g}" if e.get("shift") not in (None, 1.0) else ""
    cls = e["class"].removesuffix("Scheduler")
    return f"{label}: {cls} ({pred}{spacing}{shift}), {inf['evaluations']} evals"


def _short(label: str) -> str:
    """Axis-tick form of a label: the swapped class on its own line, without the Scheduler suffix."""
    base, at, cls = label.partition("@")
    return f"{base}\n@{cls.removesuffix('Scheduler')}" if at else label


def _legend(ax: Any, labels: list[str], texts: list[str], colors: list[Any], **kw: Any) -> None:
    """A legend with solid handles (dashed handles of coinciding curves would render blank)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=c, lw=2.5) for c in colors]
    ax.legend(handles, texts, framealpha=0.9, **kw)


def _ylim(result: dict[str, Any]) -> tuple[float, float]:
    vals = []
    for e in result["schedules"].values():
        for v in (_arr(e["train"]["log_snr"]), _arr(e["inference"]["log_snr"])):
            vals.append(v[np.isfinite(v)])
    allv = np.concatenate(vals) if vals else np.asarray([0.0])
    if allv.size == 0:
        allv = np.asarray([0.0])
    lo = max(float(allv.min()), -Y_CLIP)
    hi = min(float(allv.max()), Y_CLIP)
    pad = 0.06 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _clip(y: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y clipped to [lo, hi]; masks of values below/above."""
    below = (y < lo) & ~np.isnan(y)
    above = (y > hi) & ~np.isnan(y)
    return np.clip(y, lo, hi), below, above


def _mark_visited(ax: Any, x: np.ndarray, y: np.ndarray, lo: float, hi: float, color: Any) -> None:
    yc, below, above = _clip(y, lo, hi)
    inside = ~below & ~above & ~np.isnan(y) & ~np.isnan(x)
    ax.plot(x[inside], yc[inside], "o", ms=5, mfc=color, mec="black", mew=0.6, zorder=4)
    for mask, marker in ((below, "v"), (above, "^")):
        m = mask & ~np.isnan(x)
        if m.any():
            ax.plot(x[m], yc[m], marker, ms=8, mfc=color, mec="black", mew=0.6, zorder=5, clip_on=False)


def _line_styles(result: dict[str, Any]) -> dict[str, Any]:
    """Solid lines, except schedules whose training curves coincide: those get interleaved dashes so every
    color stays visible on the shared curve."""
    groups: dict[bytes, list[str]] = {}
    for label, e in result["schedules"].items():
        lam = np.round(_arr(e["train"]["log_snr"]), 6)
        key = np.nan_to_num(lam, nan=1e9, posinf=1e9, neginf=-1e9).tobytes() + str(len(lam)).encode()
        groups.setdefault(key, []).append(label)
    styles: dict[str, Any] = {}
    for members in groups.values():
        m = len(members)
        for j, label in enumerate(members):
            styles[label] = "-" if m == 1 else (8.0 * j, (8.0, 8.0 * (m - 1)))
    return styles


def plot_log_snr_normalized(result: dict[str, Any]) -> Any:
    """Headline: lambda vs normalized time for every schedule with the visited inference steps marked (left),
    and per schedule the training range with the visited levels on the same lambda axis (right)."""
    plt = _setup()
    entries = list(result["schedules"].items())
    fig, (ax, axr) = plt.subplots(1, 2, figsize=(13, 6.5), sharey=True,
                                  gridspec_kw={"width_ratios": [3.2, max(1.0, 0.35 * len(entries))]})
    lo, hi = _ylim(result)
    styles = _line_styles(result)
    colors = _colors(len(entries))
    for i, ((label, e), color) in enumerate(zip(entries, colors, strict=True)):
        tau, lam = _arr(e["train"]["tau"]), _arr(e["train"]["log_snr"])
        yc, below, _ = _clip(lam, lo, hi)
        ax.plot(tau, yc, color=color, lw=2.2, ls=styles[label], label=_legend_label(label, e), zorder=3)
        inf = e["inference"]
        vlam = _arr(inf["log_snr"])
        _mark_visited(ax, _arr(inf["tau"]), vlam, lo, hi, color)
        # right panel: training range as a bar, visited levels as dots, terminal value written under the bar
        finite = lam[np.isfinite(lam)]
        top = min(float(finite.max()), hi) if finite.size else hi
        bottom = float(yc[-1]) if len(yc) else lo
        axr.plot([i, i], [bottom, top], "-", color=color, lw=10, alpha=0.25, solid_capstyle="butt")
        _mark_visited(axr, np.full(len(vlam), float(i)), vlam, lo, hi, color)
        lam_t = e.get("terminal_log_snr")
        txt = "-inf" if lam_t is None or lam_t == -math.inf else f"{lam_t:.2f}"
        axr.annotate(txt, (i, bottom), xytext=(0, 9 if bottom <= lo + 1e-9 else -12), textcoords="offset "
                                                                                                 "points",
                     ha="center", fontsize=8, color=color, fontweight="bold")
        if below.any():
            ax.plot([tau[below][0]], [lo], "v", ms=9, color=color, clip_on=False, zorder=5)
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    axr.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.text(0.005, 0.15, "SNR = 1", color="gray", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("normalized training time τ (0 = clean end, 1 = noisy end of the training table)")
    ax.set_ylabel("log-SNR λ = ln(α² / σ²)")
    ax.set_title("Noise schedules on one log-SNR axis; dots = levels visited at inference "
                 f"({result['settings']['steps']} steps)", loc="left")
    _legend(ax, [k for k, _ in entries], [_legend_label(k, e) for k, e in entries], colors, loc="lower left")
    axr.set_xticks(range(len(entries)))
    axr.set_xticklabels([_short(label) for label, _ in entries], rotation=35, ha="right", fontsize=9)
    axr.set_xlim(-0.6, len(entries) - 0.4)
    axr.set_title("training range (bar), visited (dots), λ_T", fontsize=10)
    axr.grid(axis="x", visible=False)
    fig.text(0.01, 0.005, "▼ at the bottom edge: λ = -inf (zero SNR) or below the axis; coinciding curves "
                          "are "
             "drawn with interleaved dashes", fontsize=8, color="gray")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def _t_groups(result: dict[str, Any]) -> list[list[str]]:
    groups: dict[tuple[float, float], list[str]] = {}
    for label, e in result["schedules"].items():
        t = _arr(e["train"]["timesteps"])
        key = (float(np.round(np.nanmin(t), -1)), float(np.round(np.nanmax(t), -2)))
        groups.setdefault(key, []).append(label)
    return list(groups.values())


def plot_log_snr_vs_t(result: dict[str, Any]) -> Any:
    """lambda vs the timestep the model is told; schedules with different timestep scales get their own
    panel."""
    plt = _setup()
    groups = _t_groups(result)
    fig, axes = plt.subplots(1, len(groups), figsize=(10 if len(groups) == 1 else 6 * len(groups), 6),
                             squeeze=False, sharey=True)
    lo, hi = _ylim(result)
    labels = list(result["schedules"])
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    styles = _line_styles(result)
    for ax, group in zip(axes[0], groups, strict=True):
        for label in group:
            e = result["schedules"][label]
            t, lam = _arr(e["train"]["timesteps"]), _arr(e["train"]["log_snr"])
            yc, _, _ = _clip(lam, lo, hi)
            ax.plot(t, yc, color=colors[label], ls=styles[label], lw=2, label=_legend_label(label, e))
            inf = e["inference"]
            _mark_visited(ax, _arr(inf["timesteps"]), _arr(inf["log_snr"]), lo, hi, colors[label])
        ax.axhline(0.0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("timestep t (as passed to the model)")
        _legend(ax, group, [_legend_label(k, result["schedules"][k]) for k in group],
                [colors[k] for k in group], loc="lower left")
    axes[0][0].set_ylabel("log-SNR λ")
    axes[0][0].set_ylim(lo, hi)
    fig.suptitle("log-SNR vs timestep; dots = traced inference steps at the timestep the model is told")
    fig.tight_layout()
    return fig


def plot_alphas_cumprod(result: dict[str, Any]) -> Any:
    """alphas_cumprod (VP-equivalent sigmoid(lambda) for sigma/flow schedules, dashed), linear and log
    scale."""
    plt = _setup()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    entries = list(result["schedules"].items())
    styles = _line_styles(result)
    for (label, e), color in zip(entries, _colors(len(entries)), strict=True):
        tau = _arr(e["train"]["tau"])
        ac = e["train"].get("alphas_cumprod")
        lam = _arr(e["train"]["log_snr"])
        with np.errstate(over="ignore"):
            equiv = 1.0 / (1.0 + np.exp(-lam))
        a = _arr(ac) if ac is not None and e["family"] != "flow" else equiv
        vp_defined = ac is not None and e["family"] != "flow"
        style = styles[label] if vp_defined else (0, (2.0, 2.0))
        name = label + ("" if vp_defined else " (sigmoid λ)")
        inf = e["inference"]
        vtau, vlam = _arr(inf["tau"]), _arr(inf["log_snr"])
        with np.errstate(over="ignore"):
            va = 1.0 / (1.0 + np.exp(-vlam))
        for ax in (ax1, ax2):
            ax.plot(tau, a, color=color, ls=style, lw=2, label=name)
            ok = np.isfinite(vtau) & np.isfinite(va) & ((va > 0) if ax is ax2 else True)
            ax.plot(vtau[ok], va[ok], "o", ms=4, mfc=color, mec="black", mew=0.5)
        a_t = float(a[-1]) if len(a) else math.nan
        if math.isfinite(a_t) and a_t > 0:
            ax2.annotate(f"√ᾱ_T = {math.sqrt(a_t):.3g}", (1.0, a_t), xytext=(5, 0),
                         textcoords="offset points", color=color, fontsize=8, va="center",
                         annotation_clip=False)
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=1e-9)
    for ax in (ax1, ax2):
        ax.set_xlabel("normalized training time τ")
    ax1.set_ylabel("ᾱ (alphas_cumprod)")
    ax1.set_title("alphas_cumprod (linear scale)")
    ax2.set_title("alphas_cumprod (log scale: the terminal value matters)")
    _legend(ax1, [k for k, _ in entries], [k + ("" if result["schedules"][k]["train"].get("alphas_cumprod")
                                                 is not None and result["schedules"][k]["family"] != "flow"
                                                 else " (sigmoid λ)") for k, _ in entries],
            _colors(len(entries)), loc="upper right")
    fig.tight_layout()
    return fig


def plot_betas(result: dict[str, Any]) -> Any | None:
    """beta_t for the schedules that define betas; None when none does."""
    entries = [(k, e) for k, e in result["schedules"].items()
               if e["train"].get("betas") is not None
               and len(e["train"]["betas"]) == len(e["train"]["timesteps"])]
    if not entries:
        return None
    plt = _setup()
    labels = list(result["schedules"])
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    styles = _line_styles(result)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for label, e in entries:
        ax.plot(_arr(e["train"]["timesteps"]), _arr(e["train"]["betas"]), color=colors[label],
                ls=styles[label], lw=2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("β_t")
    ax.set_title("betas (where the scheduler defines them)")
    _legend(ax, [k for k, _ in entries], [k for k, _ in entries], [colors[k] for k, _ in entries],
            loc="lower right")
    return fig


def plot_inference_steps(result: dict[str, Any]) -> Any:
    """Per model evaluation: traced lambda (top) and traced minus listed lambda (bottom)."""
    plt = _setup()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True,
                                   gridspec_kw={"height_ratios": [2.2, 1]})
    lo, hi = _ylim(result)
    entries = list(result["schedules"].items())
    for (label, e), color in zip(entries, _colors(len(entries)), strict=True):
        inf = e["inference"]
        lam, listed = _arr(inf["log_snr"]), _arr(inf["listed_log_snr"])
        n = len(lam)
        x = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)
        yc, _, _ = _clip(lam, lo, hi)
        ax1.plot(x, yc, "-", color=color, lw=1.2, alpha=0.7)
        _mark_visited(ax1, x, lam, lo, hi, color)
        lc, _, _ = _clip(listed, lo, hi)
        ax1.plot(x, lc, "o", ms=9, mfc="none", mec=color, mew=1.0, label=f"{label} ({n} evals)")
        with np.errstate(invalid="ignore"):
            both_inf = np.isinf(lam) & np.isinf(listed) & (np.sign(lam) == np.sign(listed))
            d = np.where(both_inf, 0.0, lam - listed)
        d = np.where(np.isfinite(d), d, np.nan)
        ax2.plot(x, d, "o-", color=color, ms=4, lw=1)
    ax1.set_ylim(lo, hi)
    ax1.set_ylabel("log-SNR λ")
    ax1.set_title("Inference: filled = traced noise level of the sample, ring = level of the listed timestep")
    ax1.legend(loc="upper left", framealpha=0.9)
    ax2.axhline(0.0, color="gray", lw=0.8)
    ymin, ymax = ax2.get_ylim()
    ax2.set_ylim(min(ymin, -0.02), max(ymax, 0.02))
    ax2.set_ylabel("traced − listed λ")
    ax2.set_xlabel("fraction of model evaluations done")
    fig.tight_layout()
    return fig


def write_plots(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the PNGs into ``out_dir``; returns their paths."""
    from difflens.atomic import save_figure

    out = Path(out_dir)
    written = []
    for name, make in (("log_snr.png", plot_log_snr_normalized), ("log_snr_vs_t.png", plot_log_snr_vs_t),
                       ("alphas_cumprod.png", plot_alphas_cumprod), ("betas.png", plot_betas),
                       ("inference_steps.png", plot_inference_steps)):
        fig = make(result)
        if fig is None:
            continue
        save_figure(out / name, fig, dpi=110)
        written.append(out / name)
    return written
