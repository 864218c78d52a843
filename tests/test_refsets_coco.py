"""The COCO-30k-style protocol: caption i <-> reference row i <-> sample i, checked row by row, on a tiny
SD 1.x pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.refsets.coco import coco_style_reference, read_pairing
from difflens.refsets.demo_data import CaptionDataset, write_caption_dataset
from difflens.refsets.preprocess import ReferencePreprocess
from difflens.refsets.subset import draw_subset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> CaptionDataset:
    return write_caption_dataset(tmp_path_factory.mktemp("refdata"), n=24)


def test_pairing_row_by_row(data: CaptionDataset, tmp_path: Path) -> None:
    ref = coco_style_reference(str(data.arrow), caption_column="caption", num=7, subset_seed=11,
                               reference_size=16, id_column="id")
    rows = draw_subset(24, 7, seed=11).indices
    assert len(ref) == 7
    assert ref.prompts == [data.captions[r] for r in rows]
    prep = ReferencePreprocess(16)
    refs = list(ref.source.iter_images())
    assert [r for r, _ in refs] == rows.tolist()
    for i, pair in enumerate(ref.pairs):
        assert pair.sample_index == i
        assert pair.row_index == rows[i]
        assert pair.caption == data.captions[rows[i]] == ref.prompts[i]
        assert pair.reference_id == str(data.ids[rows[i]])
        row, image = refs[i]
        assert row == pair.row_index
        assert np.array_equal(image, prep.apply_array(data.images[row]))
    proto = ref.protocol
    assert proto["name"] == "coco-style" and proto["num"] == 7
    assert proto["reference_preprocess"]["size"] == 16 and proto["generated_preprocess"] == \
        proto["reference_preprocess"]
    assert proto["dataset"]["subset"]["indices_sha256"] == draw_subset(24, 7, 11).digest
    assert ref.preprocess_generated(np.zeros((64, 48, 3), np.uint8)).shape == (16, 16, 3)
    # the same rows from another layout give the same pairing; without an id column ids are NAME:SPLIT#ROW
    other = coco_style_reference(f"{data.arrow_dict}:train", caption_column="caption", num=7, subset_seed=11,
                                 reference_size=16)
    assert other.prompts == ref.prompts
    assert [p.row_index for p in other.pairs] == [p.row_index for p in ref.pairs]
    assert other.pairs[0].reference_id == f"arrow_dict:train#{rows[0]}"
    path = tmp_path / "pairing.jsonl"
    ref.write_pairing(path)
    records = read_pairing(path)
    assert [r["row_index"] for r in records] == rows.tolist()
    assert all(r["reference_decoded"] is True for r in records)
    with pytest.raises(DifflensError, match="needs a caption column"):
        coco_style_reference(str(data.arrow), caption_column=None)  # type: ignore[arg-type]


def test_pairing_with_a_tiny_pipeline(data: CaptionDataset, tmp_path: Path,
                                      tiny_pipeline_dir: Callable[[str], Path]) -> None:
    from difflens.generate import generate, read_samples
    from difflens.metrics.images import read_image

    ref = coco_style_reference(str(data.parquet), caption_column="caption", num=4, subset_seed=3,
                               reference_size=32)
    out = tmp_path / "samples"
    generate(tiny_pipeline_dir("sd15"), ref.prompts, len(ref.prompts), out, steps=2, height=32, width=32,
             seed=0, device="cpu")
    entries = read_samples(out, include_flagged=True)
    references = dict(ref.source.iter_images())
    paired = ref.pair_samples(entries)
    assert len(paired) == 4
    rows = draw_subset(24, 4, seed=3).indices
    for i, p in enumerate(paired):
        entry = entries[i]
        # sample i was generated from caption i, the caption of reference row i
        assert entry.index == i == p.pair.sample_index
        assert entry.prompt == p.pair.caption == data.captions[rows[i]]
        assert p.pair.row_index == rows[i] and p.sample_file == entry.file and p.reference_decoded
        sample = ref.preprocess_generated(read_image(out / entry.file))
        assert sample.shape == references[p.pair.row_index].shape == (32, 32, 3)
    ref.write_pairing(tmp_path / "pairing.jsonl", paired)
    assert [r["sample_file"] for r in read_pairing(tmp_path / "pairing.jsonl")] == [e.file for e in entries]

    # samples made from the captions in another order are refused, naming the first mismatch
    shuffled = coco_style_reference(str(data.parquet), caption_column="caption", num=4, subset_seed=4)
    with pytest.raises(DifflensError, match="sample 0 was generated from"):
        shuffled.pair_samples(entries)
    # a missing sample is reported
    with pytest.raises(DifflensError, match="1 of 4 captions have no finished sample"):
        ref.pair_samples(entries[:3])
