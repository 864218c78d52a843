"""The two sample sets of a comparison: each folder's images with their prompts.

A folder pairs its images with prompts through its ``manifest.jsonl`` / ``metadata.jsonl`` /
``metadata.csv`` (:mod:`difflens.generate.pairs`, as ``difflens metrics --fake``); a folder without one
takes ``--prompts FILE`` cycled over its image files in sorted order (as ``difflens metrics`` does).
Unreadable images are left out with a warning (``--strict``: an error) before the prompt sets are compared,
so that check and every score see the same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from difflens.errors import DifflensError


@dataclass
class SampleSet:
    """One side: ``files[i]`` was generated from ``prompts[i]``."""

    name: str  # "A" or "B"
    flag: str  # "--a" or "--b"
    folder: Path
    files: list[Path]
    prompts: list[str]
    pairing: str  # where the prompts came from
    warnings: list[str] = field(default_factory=list)
    unreadable: int = 0  # images left out because they could not be read

    def describe(self) -> dict[str, object]:
        return {"path": str(self.folder), "n_images": len(self.files), "n_prompts": len(set(self.prompts)),
                "prompts_from": self.pairing}


def read_sample_set(folder: str | Path, flag: str, name: str, prompt_list: list[str] | None = None,
                    prompts_flag: str = "--prompts", caption_column: str | None = None,
                    strict: bool = False) -> SampleSet:
    """Images and prompts of one side (see the module docstring); DifflensError for anything unusable."""
    from difflens.generate.pairs import find_pair_file, read_paired_folder
    from difflens.metrics.images import IMAGE_EXTENSIONS, ReadLog, list_image_files, readable_files

    path = Path(folder).expanduser()
    if not path.exists():
        raise DifflensError(f"{flag} {path} does not exist.", f"pass the folder of {name}'s samples")
    if not path.is_dir():
        raise DifflensError(f"{flag} {path} is not a folder.",
                            f"pass the folder of {name}'s samples (as difflens generate --out writes it)")
    warnings: list[str] = []
    if find_pair_file(path) is not None:
        paired = read_paired_folder(path, caption_column)
        files, prompts = list(paired.files), list(paired.prompts)
        pairing = paired.source.name
        warnings += paired.warnings()
        if prompt_list:
            warnings.append(f"{prompts_flag} ignored for {flag}: {paired.source} pairs each image with its "
                            "prompt")
    else:
        files = list_image_files(path)
        if not files:
            raise DifflensError(f"{flag}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}.",
                                f"pass the folder of {name}'s samples")
        if not prompt_list:
            raise DifflensError(f"{flag} {path} has no manifest.jsonl, metadata.jsonl or metadata.csv "
                                "pairing its images with prompts.",
                                f"pass {prompts_flag} FILE (cycled over the sorted image files), or "
                                "generate with difflens generate, which writes manifest.jsonl")
        from difflens.generate.prompts import cycle_prompts

        prompts = cycle_prompts(prompt_list, len(files))
        pairing = f"{prompts_flag} (cycled over the sorted image files)"
    if not files:
        raise DifflensError(f"{flag} {path}: no images left to compare (every image is flagged).",
                            "regenerate the flagged samples")
    log = ReadLog()
    kept = readable_files(files, log, strict, flag)
    if len(kept) < len(files):
        warnings += log.warnings(flag)
    return SampleSet(name=name, flag=flag, folder=path, files=[files[i] for i in kept],
                     prompts=[prompts[i] for i in kept], pairing=pairing, warnings=warnings,
                     unreadable=len(files) - len(kept))
