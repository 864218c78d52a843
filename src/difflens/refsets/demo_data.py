"""A tiny captioned image dataset, written in every layout the reference-set readers accept (no download).

For tests and the offline demo: crops of the photographs bundled with scikit-image / scikit-learn
(:mod:`difflens.demo.sample_images`), each with a unique caption, a list of captions and an id, saved as a
``datasets`` Arrow folder (``save_to_disk``), a ``DatasetDict`` folder with two splits, a parquet file, an
image folder with ``metadata.jsonl`` and a plain folder of PNG files. PNG is lossless, so every layout holds
the same pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBJECTS = ("an astronaut", "a cat", "a cup of coffee", "a rocket", "a deep field of galaxies",
            "a stained tissue slide", "a retina", "a chinese temple", "a flower")


@dataclass(frozen=True)
class CaptionDataset:
    """Where each layout was written, and the rows themselves."""

    root: Path
    arrow: Path
    arrow_dict: Path
    parquet: Path
    imagefolder: Path
    folder: Path
    images: Any = field(repr=False)  # (n, h, w, 3) uint8
    captions: list[str] = field(repr=False)
    ids: list[int] = field(repr=False)


def caption_rows(n: int, height: int = 32, width: int = 40,
                 seed: int = 0) -> tuple[Any, list[str], list[int]]:
    """(images (n, height, width, 3) uint8, captions, ids): crops of the bundled photographs."""
    from difflens.demo.sample_images import natural_crops

    side = max(height, width)
    crops = natural_crops(n, side, seed=seed)
    top, left = (side - height) // 2, (side - width) // 2
    images = crops[:, top:top + height, left:left + width].copy()
    captions = [f"{SUBJECTS[i % len(SUBJECTS)]}, close-up number {i}" for i in range(n)]
    ids = [1000 + 7 * i for i in range(n)]
    return images, captions, ids


def write_caption_dataset(root: str | Path, n: int = 24, height: int = 32, width: int = 40, seed: int = 0,
                          validation_rows: int = 8) -> CaptionDataset:
    """Write the dataset under ``root`` in every layout (columns ``image``, ``caption``, ``captions``,
    ``id``); the DatasetDict has ``train`` (all rows) and ``validation`` (the first ``validation_rows``)."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    try:
        from datasets import List
    except ImportError:  # datasets < 4
        from datasets import Sequence as List
    from PIL import Image as PILImage

    from difflens.atomic import save_image, write_text
    from difflens.refsets.hf_datasets import datasets_env

    root = Path(root)
    images, captions, ids = caption_rows(n, height, width, seed)
    pil = [PILImage.fromarray(img) for img in images]
    features = Features({"image": Image(), "caption": Value("string"), "captions": List(Value("string")),
                         "id": Value("int64")})
    with datasets_env(offline=True):
        ds = Dataset.from_dict({"image": pil, "caption": captions,
                                "captions": [[c, f"another view: {c}"] for c in captions], "id": ids},
                               features=features)
        ds.save_to_disk(str(root / "arrow"))
        DatasetDict({"train": ds, "validation": ds.select(range(validation_rows))}).save_to_disk(
            str(root / "arrow_dict"))
        ds.to_parquet(str(root / "data.parquet"))
    folder = root / "folder"
    imagefolder = root / "imagefolder"
    lines = []
    for i, im in enumerate(pil):
        name = f"{i:04d}.png"
        save_image(folder / name, im)
        save_image(imagefolder / name, im)
        lines.append(json.dumps({"file_name": name, "caption": captions[i], "id": ids[i]}))
    write_text(imagefolder / "metadata.jsonl", "\n".join(lines) + "\n")
    return CaptionDataset(root, root / "arrow", root / "arrow_dict", root / "data.parquet", imagefolder,
                          folder, images, captions, ids)
