"""The COCO-30k-style protocol: N rows of a captioned image dataset give N prompts and N reference images.

As papers evaluate text-to-image models (Imagen, Parti, GigaGAN, SD; "FID on 30k COCO-2014 val captions"):
draw N rows (reproducibly: :mod:`difflens.refsets.subset`), take each row's caption as a prompt (a row with
several captions uses the first), generate exactly one sample per prompt, and compare the samples with the
reference images of the same rows, resized and center-cropped to a stated size
(:mod:`difflens.refsets.preprocess`), applied to the samples too when the protocol says so.

The pairing record ties the three together row by row: sample ``i`` was generated from caption ``i``, which
is the caption of dataset row ``row_index`` whose image is reference ``reference_id``. CLIP score, FID and
the per-prompt breakdown all read the same pairing, so they use the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.refsets.dataset_source import ImageSource, open_image_source

PROTOCOL_NAME = "coco-style"
PAIRING_VERSION = 1


@dataclass(frozen=True)
class Pair:
    """One row of the protocol: sample ``sample_index`` <- ``caption`` <- dataset row ``row_index``."""

    sample_index: int
    row_index: int
    caption: str
    reference_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedSample:
    """A pair checked against a generation manifest entry."""

    pair: Pair
    sample_file: str | None
    sample_valid: bool
    reference_decoded: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.pair.to_dict(), "sample_file": self.sample_file, "sample_valid": self.sample_valid,
                "reference_decoded": self.reference_decoded}


class CocoStyleReference:
    """Prompts, reference images and the pairing of the COCO-30k-style protocol over one dataset."""

    def __init__(self, source: ImageSource, id_column: str | None = None,
                 apply_to_generated: bool = True) -> None:
        self.source = source
        captions = source.captions
        if captions is None:
            raise DifflensError("the COCO-style protocol needs a caption column.", "pass --caption-column")
        self.prompts: list[str] = captions
        ids = source.column_values(id_column) if id_column else None
        self.id_column = id_column
        base = source.identity.get("name") or Path(str(source.identity.get("path", "dataset"))).name
        split = source.identity.get("split")
        prefix = f"{base}:{split}" if split else str(base)
        self.pairs: list[Pair] = [
            Pair(sample_index=i, row_index=int(row), caption=caption,
                 reference_id=str(ids[i]) if ids is not None else f"{prefix}#{int(row)}")
            for i, (row, caption) in enumerate(zip(source.rows, captions, strict=True))
        ]
        self.apply_to_generated = apply_to_generated and source.preprocess.size is not None

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def protocol(self) -> dict[str, Any]:
        """The protocol entry for result files (with the reference preprocessing)."""
        ref = self.source.preprocess.to_dict()
        return {"name": PROTOCOL_NAME, "num": len(self.pairs), "samples_per_caption": 1,
                "caption_choice": "the row's caption (the first one when a row holds a list)",
                "dataset": self.source.identity, "reference_preprocess": ref,
                "generated_preprocess": ref if self.apply_to_generated else None,
                "pairing_sha256": self.pairing_digest()}

    def pairing_digest(self) -> str:
        """SHA-256 of the pairs (sample index, row index, caption, reference id), in order."""
        import hashlib

        h = hashlib.sha256()
        for p in self.pairs:
            h.update(json.dumps([p.sample_index, p.row_index, p.caption, p.reference_id],
                                ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def preprocess_generated(self, image: Any) -> Any:
        """A generated uint8 (H, W, 3) image as the protocol compares it (resized and cropped like the
        references when the protocol says so, else unchanged)."""
        return self.source.preprocess.apply_array(image) if self.apply_to_generated else image

    def pair_samples(self, entries: Sequence[Any], strict_count: bool = True) -> list[PairedSample]:
        """Check generation manifest entries (``index``, ``prompt``, ``file``, ``valid``) against the
        pairing: sample ``i`` must exist and have been generated from caption ``i``.

        Raises :class:`DifflensError` naming the first mismatching sample. With ``strict_count`` every
        caption needs a finished sample (flagged samples count, reported as not valid).
        """
        by_index = {int(e.index): e for e in entries}
        extra = sorted(i for i in by_index if i >= len(self.pairs) or i < 0)
        if extra:
            raise DifflensError(
                f"the generation folder holds sample {extra[0]}, beyond the {len(self.pairs)} captions of "
                "the COCO-style reference.",
                "generate exactly one sample per caption (--num-samples = number of captions)")
        missing = [p.sample_index for p in self.pairs if p.sample_index not in by_index]
        if missing and strict_count:
            raise DifflensError(f"{len(missing)} of {len(self.pairs)} captions have no finished sample "
                                f"(first: sample {missing[0]}).",
                                "finish the generation (rerun it to resume)")
        skipped = {s.row for s in self.source.skipped}
        decoded = self.source.pixels_sha256 is not None
        out = []
        for p in self.pairs:
            entry = by_index.get(p.sample_index)
            if entry is None:
                out.append(PairedSample(p, None, False, (p.row_index not in skipped) if decoded else None))
                continue
            if str(entry.prompt).strip() != p.caption:
                raise DifflensError(
                    f"sample {p.sample_index} was generated from {str(entry.prompt)[:60]!r}, but the "
                    f"COCO-style pairing gives it caption {p.caption[:60]!r} (dataset row {p.row_index}).",
                    "generate with the prompts of this reference set, in order "
                    "(the same --num-real and --subset-seed)")
            out.append(PairedSample(p, getattr(entry, "file", None), bool(getattr(entry, "valid", True)),
                                    (p.row_index not in skipped) if decoded else None))
        return out

    def pairing_records(self, paired: Sequence[PairedSample] | None = None) -> list[dict[str, Any]]:
        if paired is not None:
            return [p.to_dict() for p in paired]
        skipped = {s.row for s in self.source.skipped}
        decoded = self.source.pixels_sha256 is not None
        return [{**p.to_dict(), "reference_decoded": (p.row_index not in skipped) if decoded else None}
                for p in self.pairs]

    def write_pairing(self, path: str | Path, paired: Sequence[PairedSample] | None = None) -> None:
        """Write the pairing record as JSON lines (atomically): one line per sample index."""
        from difflens.atomic import write_text

        lines = [json.dumps(r, ensure_ascii=False) for r in self.pairing_records(paired)]
        write_text(path, "\n".join(lines) + "\n")


def read_pairing(path: str | Path) -> list[dict[str, Any]]:
    """Read a pairing record written by :meth:`CocoStyleReference.write_pairing`."""
    path = Path(path)
    if not path.is_file():
        raise DifflensError(f"pairing record {path} does not exist.", "check the path")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DifflensError(f"{path} line {lineno} is not JSON ({exc.msg}).",
                                "write the pairing again") from None
    return out


def coco_style_reference(spec: str, caption_column: str = "caption", image_column: str = "image",
                         num: int | None = None, subset_seed: int = 0, reference_size: int | None = None,
                         id_column: str | None = None, apply_to_generated: bool = True, offline: bool = False,
                         streaming: bool = False) -> CocoStyleReference:
    """Open ``spec`` under the COCO-30k-style protocol: ``num`` rows (all when None) drawn with
    ``subset_seed``, their captions as prompts (one sample each, sample ``i`` <- row ``i`` of the subset in
    ascending row order) and their images, resized and center-cropped to ``reference_size``, as the
    reference. ``id_column`` names a column whose values identify the references (e.g. a COCO image id);
    otherwise a reference is ``NAME:SPLIT#ROW``."""
    source = open_image_source(spec, image_column=image_column, caption_column=caption_column, num=num,
                               subset_seed=subset_seed, reference_size=reference_size, offline=offline,
                               streaming=streaming)
    return CocoStyleReference(source, id_column=id_column, apply_to_generated=apply_to_generated)
