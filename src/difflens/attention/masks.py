"""Ground-truth masks for attention scoring: a folder of one PNG per word, or the shapes world's own masks.

Folder rule: ``WORD.png`` holds the mask of prompt word WORD (file stem matched case-insensitively to the
word; a repeated word is named by its label, ``cat#1.png``, ``cat#2.png``, as in ``attention.json``). Each
file is read as 8-bit grayscale (PIL ``convert("L")``; colour and alpha are flattened); a pixel is inside
the mask when its value is >= 128. Every mask must have the image's size (no resizing: a mask of another size
is an error). Other files in the folder are ignored.

Shapes masks (``shapes:SEED``): the renderer's per-word masks of scene SEED (:mod:`difflens.shapes`), whose
caption must be the run's prompt.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

MASK_THRESHOLD = 128
SHAPES_PREFIX = "shapes:"


def word_labels(text: str) -> list[tuple[str, str]]:
    """(label, word) for each word of ``text`` in order; a repeated word (case-insensitive) is labelled
    ``word#k`` (k-th occurrence), as :func:`difflens.attention.words.tokenize_prompt` does."""
    from difflens.attention.words import find_words

    words = [w for w, _, _ in find_words(text)]
    counts = Counter(w.lower() for w in words)
    seen: Counter[str] = Counter()
    out = []
    for w in words:
        seen[w.lower()] += 1
        out.append((w if counts[w.lower()] == 1 else f"{w}#{seen[w.lower()]}", w))
    return out


def resolve_label(name: str, prompt: str, mapped: list[str], source: str) -> str:
    """The run's word label a mask named ``name`` belongs to, or a clear error (not in the prompt, ambiguous
    for a repeated word, or in the prompt but without a map in the run)."""
    labels = word_labels(prompt)
    key = name.lower()
    hits = [lab for lab, _ in labels if lab.lower() == key]
    if not hits:
        repeated = [lab for lab, w in labels if w.lower() == key]
        if repeated:
            raise DifflensError(f"{source}: mask {name!r} is ambiguous; the word occurs {len(repeated)} "
                                f"times in the prompt {prompt!r}.",
                                f"name the masks by occurrence: {', '.join(repeated)}")
        shown = ", ".join(dict.fromkeys(w for _, w in labels))
        raise DifflensError(f"{source}: mask for {name!r}, which is not a word of the prompt {prompt!r} "
                            f"({shown}).", "rename the mask after a prompt word, or remove it")
    label = hits[0]
    if label.lower() not in {m.lower() for m in mapped}:
        raise DifflensError(f"{source}: the run has no map for prompt word {label!r} (it mapped "
                            f"{', '.join(mapped) or 'no words'}).",
                            "rerun the attention mode without --words, or with the word included")
    return next(m for m in mapped if m.lower() == label.lower())


def read_mask(path: Path, size: tuple[int, int]) -> Any:
    """One binary mask (H, W) from an image file (grayscale >= 128); errors for unreadable or misfit files."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            gray = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DifflensError(f"cannot read mask {path}: {exc}", "replace the file with a PNG mask") from None
    if gray.shape != tuple(size):
        raise DifflensError(f"mask {path} is {gray.shape[1]}x{gray.shape[0]} (WxH); the image is "
                            f"{size[1]}x{size[0]}.", "make every mask the size of the analysed image")
    return gray >= MASK_THRESHOLD


def folder_masks(folder: Path, prompt: str, mapped: list[str], size: tuple[int, int]) -> dict[str, Any]:
    """label -> mask for every ``*.png`` in ``folder`` (see the module rule)."""
    if not folder.is_dir():
        raise DifflensError(f"masks folder {folder} does not exist.",
                            "pass a folder holding one WORD.png per word, or shapes:SEED")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise DifflensError(f"masks folder {folder} holds no .png file.", "add one WORD.png mask per word")
    out: dict[str, Any] = {}
    for f in files:
        label = resolve_label(f.stem, prompt, mapped, str(folder))
        if label in out:
            raise DifflensError(f"{folder}: two masks for word {label!r}.", "keep one mask file per word")
        out[label] = read_mask(f, size)
    return out


def scene_masks(scene: Any) -> dict[str, Any]:
    """label -> mask from a shapes :class:`Scene` (``word_masks``: (word index, word, mask))."""
    import numpy as np

    labels = word_labels(scene.caption)
    out: dict[str, Any] = {}
    for index, word, mask in scene.word_masks:
        label, text = labels[int(index)]
        if text.lower() != str(word).lower():
            raise DifflensError(f"shapes scene: word {index} of {scene.caption!r} is {text!r}, not {word!r}.",
                                "this is a difflens bug; please report it")
        out[label] = np.asarray(mask, dtype=bool)
    return out


def shapes_masks(spec: str, prompt: str, mapped: list[str], size: tuple[int, int]) -> dict[str, Any]:
    """Masks of ``shapes:SEED`` for a run whose prompt must be that scene's caption."""
    text = spec[len(SHAPES_PREFIX):]
    try:
        seed = int(text)
    except ValueError:
        raise DifflensError(f"--masks {spec!r}: {text!r} is not a seed.",
                            "pass shapes:SEED, e.g. shapes:7") from None
    try:
        from difflens.shapes import render_scene
    except ImportError:
        raise DifflensError("--masks shapes:SEED needs difflens.shapes, which this install lacks.",
                            "pass a folder of PNG masks instead") from None
    scene = render_scene(seed)
    if scene.caption.strip().lower() != prompt.strip().lower():
        raise DifflensError(f"--masks {spec}: the scene's caption is {scene.caption!r}, the run's prompt is "
                            f"{prompt!r}.", "score the run made from that scene, with its caption as prompt")
    masks = scene_masks(scene)
    out = {}
    for label, mask in masks.items():
        if mask.shape != tuple(size):
            raise DifflensError(f"--masks {spec}: masks are {mask.shape[1]}x{mask.shape[0]}, the run's image "
                                f"is {size[1]}x{size[0]}.", "score runs made on the scene's own image")
        out[resolve_label(label, prompt, mapped, spec)] = mask
    return out


def load_masks(source: str | Path, prompt: str, mapped: list[str], size: tuple[int, int]) -> dict[str, Any]:
    """Masks from a folder or ``shapes:SEED``, keyed by the run's word labels."""
    s = str(source)
    if s.startswith(SHAPES_PREFIX):
        return shapes_masks(s, prompt, mapped, size)
    return folder_masks(Path(s).expanduser(), prompt, mapped, size)
