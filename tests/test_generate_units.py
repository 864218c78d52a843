"""Generate mode building blocks: prompt files, per-sample seeds, the manifest, the batch-size chooser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from difflens.errors import DifflensError
from difflens.generate.batching import BatchSizer
from difflens.generate.manifest import (
    MANIFEST_NAME,
    ManifestEntry,
    RunSettings,
    append_entry,
    check_folder,
    image_file,
    read_manifest,
    write_settings,
)
from difflens.generate.prompts import cycle_prompts, load_prompts, prompts_digest
from difflens.generate.seeds import generator_for, sample_seed


def test_prompt_formats(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \nthe sky\n", encoding="utf-8")
    jsonl = '{"prompt": "a cat"}\n\n{"prompt": "a dog", "id": 3}\n'
    (tmp_path / "p.jsonl").write_text(jsonl, encoding="utf-8")
    (tmp_path / "p.csv").write_text('id,Prompt\n1,a cat\n2,"a dog, running"\n', encoding="utf-8")
    assert load_prompts(tmp_path / "p.txt") == ["a cat", "a dog", "the sky"]
    assert load_prompts(tmp_path / "p.jsonl") == ["a cat", "a dog"]
    assert load_prompts(tmp_path / "p.csv") == ["a cat", "a dog, running"]
    assert cycle_prompts(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
    assert prompts_digest(["a", "b"]) != prompts_digest(["b", "a"])
    assert prompts_digest(["ab"]) != prompts_digest(["a", "b"])


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("empty.txt", "\n  \n", "holds no prompt"),
    ("bad.jsonl", '{"prompt": "a"}\nnot json\n', "line 2"),
    ("nofield.jsonl", '{"text": "a"}\n', "no string 'prompt'"),
    ("nocol.csv", "id,caption\n1,a cat\n", "no 'prompt' column"),
])
def test_prompt_file_errors(tmp_path: Path, name: str, text: str, needle: str) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DifflensError, match=needle):
        load_prompts(tmp_path / name)
    with pytest.raises(DifflensError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")


def test_sample_seeds_deterministic_distinct_and_reproduce_noise() -> None:
    import torch

    seeds = [sample_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s < 2**63 for s in seeds)
    assert seeds == [sample_seed(0, i) for i in range(1000)]
    assert sample_seed(1, 0) != sample_seed(0, 0)
    a = torch.randn(4, generator=generator_for(seeds[7]))
    b = torch.randn(4, generator=torch.Generator("cpu").manual_seed(seeds[7]))
    assert torch.equal(a, b)


def _settings(**kw: object) -> RunSettings:
    base = dict(model="m", pipeline="P", scheduler="S", scheduler_config="{}", steps=2, guidance=1.0,
                height=32, width=32, negative_prompt=None, seed=0, seed_scheme="x", dtype="float32",
                prompts_digest="d", num_prompts=1)
    base.update(kw)
    return RunSettings(**base)  # type: ignore[arg-type]


def _entry(i: int) -> ManifestEntry:
    return ManifestEntry(index=i, prompt="a", seed=i, file=image_file(i), model="m", scheduler="S", steps=2,
                         guidance=1.0, height=32, width=32)


def test_manifest_torn_line_is_dropped_and_entries_round_trip(tmp_path: Path) -> None:
    append_entry(tmp_path, _entry(0))
    append_entry(tmp_path, _entry(1))
    with open(tmp_path / MANIFEST_NAME, "a", encoding="utf-8") as f:
        f.write(_entry(2).to_json()[:20])  # a kill in the middle of a line
    entries, bad = read_manifest(tmp_path)
    assert sorted(entries) == [0, 1] and bad == 1
    assert entries[1] == _entry(1)
    line = json.loads((tmp_path / MANIFEST_NAME).read_text().splitlines()[0])
    for key in ("index", "prompt", "seed", "file", "model", "scheduler", "steps", "guidance", "height",
                "width"):
        assert key in line


def test_check_folder_refuses_other_settings_and_foreign_folders(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert check_folder(out, _settings()) is False  # new folder
    write_settings(out, _settings(), {})
    assert check_folder(out, _settings()) is True  # resume
    with pytest.raises(DifflensError, match="steps: 2 -> 3"):
        check_folder(out, _settings(steps=3))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.png").write_bytes(b"x")
    with pytest.raises(DifflensError, match="not empty"):
        check_folder(foreign, _settings())


def test_batch_sizer_doubles_while_faster_and_halves_on_oom() -> None:
    s = BatchSizer(None, cap=16, trials=2)
    s.record(1, 1, 1.0)  # warm-up, ignored
    assert s.next(100) == 1
    s.record(1, 1, 1.0)
    s.record(1, 1, 2.0)  # best of two trials: 1 img/s
    assert s.next(100) == 2
    s.record(2, 2, 1.0)
    s.record(2, 2, 5.0)  # 2 img/s (a disturbed trial does not count): better, try 4
    assert s.next(100) == 4
    s.record(4, 4, 3.9)
    s.record(4, 4, 3.95)  # 1.03 img/s: worse, settle on 2
    assert s.settled and s.next(100) == 2 and s.next(1) == 1
    assert s.shrink() and s.next(100) == 1 and not s.shrink()
    fixed = BatchSizer(3, cap=16)
    fixed.record(3, 3, 100.0)
    assert fixed.next(100) == 3
