"""Train the shapes-world models on the CPU: ``python -m difflens.shapes.train --out DIR [--stage S]``.

Stages (each reads what the earlier ones left in ``--work``; ``all`` runs them in order):

1. ``data``: render ``--images`` training scenes (seeds ``split_seeds("train", n)``).
2. ``vae``: ``AutoencoderKL``, loss = mean |x' - x| + ``KL_WEIGHT`` * KL(q(z|x) || N(0, I)) (summed KL per
   image); afterwards ``scaling_factor`` = 1 / std of the posterior means (``shift_factor`` 0).
3. ``clip``: ``CLIPModel``, symmetric InfoNCE (Radford et al. 2021) with soft targets for identical captions
   in a batch and a colour-swapped copy of every caption as an extra negative text.
4. ``latents``: encode every training image once (posterior mean x scaling_factor).
5. ``unet``: SD 1.x ``UNet2DConditionModel``, epsilon loss ||eps - eps_theta(sqrt(a_t) z + sqrt(1-a_t) eps,
   t, c)||^2 with t uniform, c = the pipeline's own ``encode_prompt`` of the caption, replaced by that of
   "" with probability ``DROPOUT`` (classifier-free guidance); EMA of the weights is saved.
6. ``mmdit``: ``SD3Transformer2DModel``, rectified flow: x_s = (1 - s) z + s eps, target eps - z, s =
   sigmoid(N(0, 1)) (SD3's logit-normal), timestep 1000 s; same caption dropout and EMA.
   With ``--attn-weight w`` > 0 (unet and mmdit), w * L_attn is added: the attention supervision of
   :mod:`difflens.shapes.attn_loss` (``--attn-loss mass`` or ``cover``; the shipped denoisers were
   fine-tuned with it; see manifest.json).
   ``--init FOLDER`` continues from an earlier pipeline folder's denoiser.
7. ``ship``: copy ``clip``, ``unet`` and ``mmdit`` to ``--out`` and write ``manifest.json`` (SHA-256 of every
   file, the command, versions, stage wall times).

``scripts/train-shapes.sh`` runs every stage with the arguments that made the shipped files.

Determinism: every stage seeds torch and numpy from ``--seed`` and its own index; one CPU thread per
process (``--threads``) keeps the float reduction order fixed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from difflens.shapes import configs as C
from difflens.shapes.attn_loss import CaptureCrossAttn, CollapsedZeros, attention_loss, word_targets
from difflens.shapes.world import COLORS, render_images, split_seeds

STAGES = ("data", "vae", "clip", "latents", "unet", "mmdit", "ship")
KL_WEIGHT = 1e-6
DROPOUT = 0.1
T5_ROWS = 256  # the SD3 pipeline's default max_sequence_length: zero rows when text_encoder_3 is None


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _command() -> str:
    return " ".join(["python -m difflens.shapes.train", *sys.argv[1:]])


def _seed(base: int, stage: str) -> int:
    import torch

    s = base * 100 + STAGES.index(stage)
    torch.manual_seed(s)
    return s


def swap_colors(caption: str, rng: np.random.Generator) -> str:
    """The caption with its colours changed: two-object captions swap their two colours; one-object
    captions take another palette colour."""
    words = caption.split()
    idx = [i for i, w in enumerate(words) if w in COLORS]
    if len(idx) == 2:
        words[idx[0]], words[idx[1]] = words[idx[1]], words[idx[0]]
    else:
        others = [c for c in COLORS if c != words[idx[0]]]
        words[idx[0]] = others[int(rng.integers(len(others)))]
    return " ".join(words)


def stage_data(work: Path, args: argparse.Namespace) -> None:
    images, captions = render_images(split_seeds("train", args.images))
    np.save(work / "images.npy", images)
    (work / "captions.json").write_text(json.dumps(captions))


def _images(work: Path) -> tuple[np.ndarray, list[str]]:
    return np.load(work / "images.npy"), json.loads((work / "captions.json").read_text())


def _to_tensor(batch: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def stage_vae(work: Path, args: argparse.Namespace) -> None:
    import torch
    from diffusers import AutoencoderKL

    seed = _seed(args.seed, "vae")
    images, _ = _images(work)
    rng = np.random.default_rng(seed)
    vae = AutoencoderKL(**C.VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    for step in range(args.vae_steps):
        x = _to_tensor(images[rng.integers(len(images), size=args.vae_batch)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            _log(f"vae {step}/{args.vae_steps} l1 {l1.item():.4f}")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(_to_tensor(images[i:i + 64])).latent_dist.mean
                           for i in range(0, min(1024, len(images)), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()), shift_factor=0.0)
    vae.save_pretrained(work / "vae")
    _log(f"vae scaling_factor {vae.config.scaling_factor:.4f}, latent mean {means.mean().item():.3f}")


def stage_clip(work: Path, args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    seed = _seed(args.seed, "clip")
    images, captions = _images(work)
    rng = np.random.default_rng(seed)
    tok = C.build_tokenizer()
    model = C.build_clip(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=args.clip_lr, weight_decay=0.01)
    for step in range(args.clip_steps):
        idx = rng.integers(len(images), size=args.clip_batch)
        caps = [captions[i] for i in idx]
        texts = caps + [swap_colors(c, rng) for c in caps]
        enc = tok(texts, padding="max_length", max_length=C.MAX_TOKENS, truncation=True, return_tensors="pt")
        out = model(input_ids=enc.input_ids, pixel_values=_to_tensor(images[idx]))
        logits = out.logits_per_image  # (B, 2B): image i vs every text
        same = torch.tensor([[a == b for b in texts] for a in caps], dtype=torch.float32)
        loss_i = -(F.log_softmax(logits, dim=1) * same / same.sum(1, keepdim=True)).sum(1).mean()
        lt = logits[:, : len(caps)].t()
        sq = same[:, : len(caps)]
        loss_t = -(F.log_softmax(lt, dim=1) * sq / sq.sum(1, keepdim=True)).sum(1).mean()
        loss = 0.5 * (loss_i + loss_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.clip_steps - 1:
            _log(f"clip {step}/{args.clip_steps} loss {loss.item():.4f}")
    model.save_pretrained(work / "clip")
    C.build_processor(tok).save_pretrained(work / "clip")


def stage_latents(work: Path, args: argparse.Namespace) -> None:
    import torch
    from diffusers import AutoencoderKL

    _seed(args.seed, "latents")
    images, _ = _images(work)
    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 64):
            out.append(vae.encode(_to_tensor(images[i:i + 64])).latent_dist.mean * vae.config.scaling_factor)
    z = torch.cat(out).numpy().astype(np.float32)
    np.save(work / "latents.npy", z)
    _log(f"latents {z.shape} std {z.std():.3f}")


def _text_encoders(work: Path) -> tuple[Any, Any, Any]:
    """(tokenizer, CLIPTextModel, CLIPTextModelWithProjection) holding the trained text tower."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    clip = CLIPModel.from_pretrained(work / "clip")
    tok = CLIPTokenizer.from_pretrained(work / "clip")
    sd = clip.state_dict()

    def take(model: Any) -> Any:  # key names differ between transformers versions: try both spellings
        model.load_state_dict({k: sd[k] if k in sd else sd["text_model." + k] for k in model.state_dict()})
        return model.eval()

    cfg = clip.config.text_config
    cfg.projection_dim = clip.config.projection_dim
    return tok, take(CLIPTextModel(cfg)), take(CLIPTextModelWithProjection(cfg))


def _ema_update(ema: list[Any], params: list[Any], step: int) -> None:
    import torch

    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema, params, strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def _denoiser_loop(name: str, model: Any, forward: Any, n: int, steps: int, batch: int, lr: float,
                   rng: np.random.Generator) -> None:
    """AdamW (linear warm-up over 100 steps, grad-norm clip 1), EMA copied into ``model`` at the end."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    model.train()
    for step in range(steps):
        loss = forward(rng.integers(n, size=batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, params, step)
        if step % 100 == 0 or step == steps - 1:
            _log(f"{name} {step}/{steps} loss {loss.item():.4f}")
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    model.eval()


def _caption_table(captions: list[str]) -> tuple[list[str], np.ndarray]:
    """Unique captions with "" last, and each training caption's index into that list."""
    uniq = sorted(set(captions))
    pos = {c: i for i, c in enumerate(uniq)}
    return [*uniq, ""], np.asarray([pos[c] for c in captions])


def _denoiser_inputs(work: Path, args: argparse.Namespace, stage: str) -> tuple[Any, list[str], Any, Any]:
    """What both denoiser stages start from: the stage's seeded generator, the captions, the VAE latents
    and the text encoders."""
    import torch

    rng = np.random.default_rng(_seed(args.seed, stage))
    _, captions = _images(work)
    return rng, captions, torch.from_numpy(np.load(work / "latents.npy")), _text_encoders(work)


def stage_unet(work: Path, args: argparse.Namespace) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.models.attention_processor import AttnProcessor2_0

    rng, captions, z, (tok, text, _) = _denoiser_inputs(work, args, "unet")
    unet = (UNet2DConditionModel.from_pretrained(Path(args.init) / "unet") if args.init
            else UNet2DConditionModel(**C.UNET_CONFIG))
    sched = DPMSolverMultistepScheduler(**{**C.SD_SCHEDULER, "timestep_spacing": "trailing"})
    pipe = StableDiffusionPipeline(vae=AutoencoderKL.from_pretrained(work / "vae"), text_encoder=text,
                                   tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    table, cap_idx = _caption_table(captions)
    with torch.no_grad():
        emb = pipe.encode_prompt(table, "cpu", 1, False)[0]
    train_sched = DDPMScheduler(**C.SD_SCHEDULER)
    store: list[Any] = []
    if args.attn_weight > 0:
        tokens, cover = (torch.from_numpy(a) for a in word_targets(work, len(z)))
        unet.set_attn_processor({name: CaptureCrossAttn(store) if name.endswith("attn2.processor") else proc
                                 for name, proc in unet.attn_processors.items()})

    def forward(idx: np.ndarray) -> Any:
        x0 = z[idx]
        c = cap_idx[idx].copy()
        c[rng.random(len(idx)) < DROPOUT] = len(table) - 1
        t = torch.from_numpy(rng.integers(0, 1000, size=len(idx)))
        eps = torch.randn_like(x0)
        store.clear()
        pred = unet(train_sched.add_noise(x0, eps, t), t, encoder_hidden_states=emb[c]).sample
        loss = (pred - eps).pow(2).mean()
        if args.attn_weight > 0:
            keep = torch.from_numpy(c != len(table) - 1)
            term = attention_loss(store, tokens[idx], cover[idx], keep, args.attn_loss)
            loss = loss + args.attn_weight * term
        return loss

    _denoiser_loop("unet", unet, forward, len(z), args.unet_steps, args.batch, args.lr, rng)
    unet.set_attn_processor(AttnProcessor2_0())
    pipe.save_pretrained(work / "unet", safe_serialization=True)


def stage_mmdit(work: Path, args: argparse.Namespace) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    rng, captions, z, (tok, _, proj) = _denoiser_inputs(work, args, "mmdit")
    dit = (SD3Transformer2DModel.from_pretrained(Path(args.init) / "transformer") if args.init
           else SD3Transformer2DModel(**C.MMDIT_CONFIG))
    pipe = StableDiffusion3Pipeline(
        transformer=dit, scheduler=FlowMatchEulerDiscreteScheduler(**C.FLOW_SCHEDULER),
        vae=AutoencoderKL.from_pretrained(work / "vae"), text_encoder=proj, tokenizer=tok,
        text_encoder_2=proj, tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)
    table, cap_idx = _caption_table(captions)
    with torch.no_grad():
        emb, _, pooled, _ = pipe.encode_prompt(table, table, None, device="cpu",
                                               do_classifier_free_guidance=False,
                                               max_sequence_length=T5_ROWS)
    assert emb.shape[1] == C.MAX_TOKENS + T5_ROWS and bool((emb[:, C.MAX_TOKENS:] == 0).all())
    short = emb[:, : C.MAX_TOKENS + 1].contiguous()
    x, t = z[:2], torch.tensor([300.0, 700.0])
    with torch.no_grad():
        full = dit(hidden_states=x, encoder_hidden_states=emb[:2], pooled_projections=pooled[:2],
                   timestep=t).sample
        dit.set_attn_processor(CollapsedZeros(T5_ROWS))
        fast = dit(hidden_states=x, encoder_hidden_states=short[:2], pooled_projections=pooled[:2],
                   timestep=t).sample
    diff = (full - fast).abs().max().item()
    _log(f"collapsed zero rows vs full sequence: max |diff| {diff:.2e}")
    assert diff < 1e-4, diff

    store: list[Any] = []
    if args.attn_weight > 0:
        tokens, cover = (torch.from_numpy(a) for a in word_targets(work, len(z)))
        dit.set_attn_processor(CollapsedZeros(T5_ROWS, store))

    def forward(idx: np.ndarray) -> Any:
        x0 = z[idx]
        c = cap_idx[idx].copy()
        c[rng.random(len(idx)) < DROPOUT] = len(table) - 1
        s = torch.sigmoid(torch.from_numpy(rng.standard_normal(len(idx))).float())
        eps = torch.randn_like(x0)
        xs = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * eps
        store.clear()
        pred = dit(hidden_states=xs, encoder_hidden_states=short[c], pooled_projections=pooled[c],
                   timestep=s * 1000).sample
        loss = (pred - (eps - x0)).pow(2).mean()
        if args.attn_weight > 0:
            keep = torch.from_numpy(c != len(table) - 1)
            term = attention_loss(store, tokens[idx], cover[idx], keep, args.attn_loss)
            loss = loss + args.attn_weight * term
        return loss

    _denoiser_loop("mmdit", dit, forward, len(z), args.mmdit_steps, args.batch, args.lr, rng)
    dit.set_attn_processor(JointAttnProcessor2_0())
    t5, t5_tok = C.t5_stub()
    pipe.register_modules(text_encoder_3=t5, tokenizer_3=t5_tok)
    with torch.no_grad():  # the stub changes nothing: same prompt embeddings as the training used
        again = pipe.encode_prompt(table[:4], table[:4], table[:4], device="cpu",
                                   do_classifier_free_guidance=False,
                                   max_sequence_length=T5_ROWS)[0]
    assert torch.equal(again, emb[:4])
    pipe.save_pretrained(work / "mmdit", safe_serialization=True)


def stage_ship(work: Path, args: argparse.Namespace) -> None:
    from difflens.shapes.models import write_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("clip", "unet", "mmdit"):
        if (out / name).exists():
            shutil.rmtree(out / name)
        shutil.copytree(work / name, out / name)
    times = {}
    for f in sorted(work.glob("time-*.json")):
        rec = json.loads(f.read_text())
        times[rec["stage"]] = rec["runs"]
    note = ("Toy models of the shapes world (difflens.shapes.world), not real text-to-image models. "
            "Each stage "
            "lists its runs in order; a run with --init continued the denoiser of the folder it names (the "
            "earlier run's output, renamed). Runs with --attn-weight > 0 added the attention supervision of "
            "difflens.shapes.attn_loss (--attn-loss mass: mass on the object; cover: KL divergence from the "
            "object's coverage), so word maps sit on their objects by construction. Made by "
            "scripts/train-shapes.sh.")
    write_manifest(out, command=_command(), stages=times, note=note)
    _log(f"shipped to {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m difflens.shapes.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder that receives clip/, unet/, mmdit/, manifest.json")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "difflens-shapes-work"))
    p.add_argument("--stage", default="all", choices=("all", *STAGES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--clip-steps", type=int, default=600)
    p.add_argument("--clip-batch", type=int, default=128)
    p.add_argument("--clip-lr", type=float, default=1e-3)
    p.add_argument("--unet-steps", type=int, default=2000)
    p.add_argument("--mmdit-steps", type=int, default=2000)
    p.add_argument("--init", default=None,
                   help="unet/mmdit: continue from the denoiser of this earlier pipeline folder")
    p.add_argument("--attn-weight", type=float, default=0.0,
                   help="unet/mmdit: weight of the attention-supervision term (difflens.shapes.attn_loss)")
    p.add_argument("--attn-loss", default="mass", choices=("mass", "cover"),
                   help="unet/mmdit: the attention term: mass on the object (peaked maps) or the KL "
                        "divergence from the object's coverage (maps spread over the object)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = STAGES if args.stage == "all" else (args.stage,)
    fns = {"data": stage_data, "vae": stage_vae, "clip": stage_clip, "latents": stage_latents,
           "unet": stage_unet, "mmdit": stage_mmdit, "ship": stage_ship}
    for st in stages:
        t0 = time.time()
        _log(f"stage {st} start")
        fns[st](work, args)
        dt = time.time() - t0
        if st != "ship":  # a continued run (--init) adds to the record of the runs it continues
            times_path = work / f"time-{st}.json"
            runs = json.loads(times_path.read_text())["runs"] if args.init and times_path.exists() else []
            runs.append({"seconds": round(dt, 1), "command": _command()})
            times_path.write_text(json.dumps({"stage": st, "runs": runs}))
        _log(f"stage {st} done in {dt:.1f} s")


if __name__ == "__main__":
    main()
