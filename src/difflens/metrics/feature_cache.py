"""Feature cache for the CLIP and DINOv2 extractors.

A cached array is found by a key that covers everything that changes the numbers: extractor, model id,
weights digest (SHA-256 of the weight and config files), preprocessing protocol, dtype, device type, the
input manifest (a digest of every image's bytes, in order, or of the prompt list) and the cache format
version. The key is stored inside the file and compared in full on load, so a stale or foreign file is
never used (a mismatch is a miss). Writes are atomic; no pickle (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difflens.hashing import sha256_file

CACHE_VERSION = 1
CACHE_ENV = "DIFFLENS_CACHE_DIR"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
_CONFIG_NAMES = ("config.json", "preprocessor_config.json", "tokenizer.json", "vocab.json", "merges.txt",
                 "tokenizer_config.json", "special_tokens_map.json", "processor_config.json")


@dataclass(frozen=True)
class FeatureKey:
    """What a cached feature array was computed from."""

    extractor: str
    model_id: str
    weights_digest: str
    preprocessing: dict[str, Any]
    dtype: str
    device_type: str
    inputs_digest: str
    num_inputs: int
    version: int = CACHE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$DIFFLENS_CACHE_DIR/features``, else ``$XDG_CACHE_HOME/difflens/features`` or ``~/.cache/...``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "features"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "difflens" / "features"


class FeatureCache:
    """Arrays stored as ``<root>/<extractor>-<key digest>.npz`` holding ``features`` and ``key``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def path(self, key: FeatureKey) -> Path:
        return self.root / f"{key.extractor}-{key.digest()[:32]}.npz"

    def load(self, key: FeatureKey) -> Any | None:
        """The cached array, or None when absent, unreadable or made under another key."""
        import numpy as np

        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = str(data["key"])
                feats = np.array(data["features"])
        except (OSError, ValueError, KeyError):
            self.misses += 1
            return None
        if stored != key.canonical() or feats.shape[0] != key.num_inputs:
            self.misses += 1
            return None
        self.hits += 1
        return feats

    def save(self, key: FeatureKey, features: Any) -> Path:
        import numpy as np

        from difflens.atomic import save_npz

        path = self.path(key)
        save_npz(path, features=np.asarray(features), key=np.array(key.canonical()))
        return path

    def get_or_compute(self, key: FeatureKey, compute: Callable[[], Any]) -> Any:
        cached = self.load(key)
        if cached is not None:
            return cached
        feats = compute()
        try:
            self.save(key, feats)
        except OSError as exc:  # a cache is an optimisation: a read-only or full disk must not fail a run
            from difflens.console import console

            console.print(f"[yellow]warning:[/] feature cache not written ({exc.strerror or exc})")
        return feats


class NoCache(FeatureCache):
    """A cache that never stores anything (``--no-cache``)."""

    def __init__(self) -> None:
        super().__init__(root=Path(os.devnull))

    def load(self, key: FeatureKey) -> Any | None:
        self.misses += 1
        return None

    def save(self, key: FeatureKey, features: Any) -> Path:
        return self.path(key)

    def get_or_compute(self, key: FeatureKey, compute: Callable[[], Any]) -> Any:
        return compute()


# --------------------------------------------------------------------------------------------- digests


_WEIGHTS_MEMO: dict[tuple[str, int, int], str] = {}


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 over the weight and config files of a model folder (names and contents, sorted by name).

    Memoised in-process by (path, size, mtime) so a run hashes each folder once.
    """
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and
                   (p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_NAMES))
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        d = _WEIGHTS_MEMO.get(memo_key)
        if d is None:
            d = sha256_file(p)
            _WEIGHTS_MEMO[memo_key] = d
        h.update(p.name.encode() + b"\0" + d.encode() + b"\n")
    return h.hexdigest()


def resolve_model_dir(model_id: str, offline: bool = False) -> Path | None:
    """The local folder holding ``model_id``: the folder itself, or its snapshot in the Hugging Face cache."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    try:
        from transformers.utils import cached_file

        cfg = cached_file(model_id, "config.json", local_files_only=True)
    except (OSError, ValueError):
        return None
    return Path(cfg).parent if cfg else None


def inputs_digest(items: Sequence[Any]) -> str:
    """Digest of an ordered list of images: paths by file bytes, arrays/PIL images by shape and pixels."""
    import numpy as np

    h = hashlib.sha256()
    for item in items:
        if isinstance(item, (str, Path)):
            h.update(b"F" + sha256_file(item).encode())
        else:
            arr = np.ascontiguousarray(np.asarray(item))
            h.update(b"A" + str(arr.shape).encode() + str(arr.dtype).encode())
            h.update(hashlib.sha256(arr.tobytes()).digest())
    return h.hexdigest()


def strings_digest(strings: Iterable[str]) -> str:
    """Digest of an ordered list of strings (prompts)."""
    h = hashlib.sha256()
    for s in strings:
        data = str(s).encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


# ------------------------------------------------------------------------------ shared extractor helpers


def as_rgb_image(item: Any) -> Any:
    """A PIL RGB image from a path, a PIL image or a uint8 (H, W, 3) array, by the one to-RGB rule of
    :mod:`difflens.metrics.images` (8-bit: PIL ``convert("RGB")``; alpha dropped; 16-bit: high byte)."""
    import numpy as np
    from PIL import Image

    from difflens.errors import DifflensError
    from difflens.metrics.images import ImageReadError, read_image, to_rgb_uint8

    if isinstance(item, (str, Path)):
        try:
            return Image.fromarray(read_image(item))
        except ImageReadError as exc:
            raise DifflensError(f"cannot read image {item}: {exc}.", "remove or replace the file") from None
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else Image.fromarray(to_rgb_uint8(item))
    arr = np.asarray(item)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise DifflensError(f"image arrays must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}.",
                            "pass uint8 RGB images")
    return Image.fromarray(arr)


def resample_indices(n: int, num: int, seed: int) -> list[Any]:
    """``num`` bootstrap resamples (with replacement) of ``range(n)``: the same index sets as the Inception
    metrics' bootstrap (:func:`difflens.metrics.bootstrap.bootstrap_indices`) when that module exists."""
    import numpy as np

    try:
        from difflens.metrics.bootstrap import bootstrap_indices
    except ImportError:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, n, n) for _ in range(num)]
    return [np.asarray(idx) for idx in bootstrap_indices(n, num, seed)]


def percentile_ci95(values: Any) -> tuple[float, float]:
    import numpy as np

    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [2.5, 97.5])
    return float(lo), float(hi)


def batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def load_hf_model(cls: Any, model_id: str, offline: bool, what: str, flag: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(model_id)``, one clear error when it cannot be loaded (offline: cache only)."""
    from transformers.utils import logging as hf_logging

    from difflens.errors import DifflensError
    from difflens.models import is_offline

    local = Path(model_id).expanduser().is_dir()
    off = is_offline(offline)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # difflens shows its own progress; no per-load weight bars
    try:
        return cls.from_pretrained(str(Path(model_id).expanduser()) if local else model_id,
                                   local_files_only=off or local, **kwargs)
    except (OSError, ValueError) as exc:
        where = "the folder" if local else ("the local cache (offline mode)" if off else "the hub or cache")
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DifflensError(f"could not load the {what} {model_id!r} from {where}: {first}",
                            f"pass {flag} with a local folder (save_pretrained format), or download "
                            f"{model_id} first while online") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def weights_digest_for(model_id: str, offline: bool) -> str:
    """The weights digest of a loaded model, or ``unknown:<id>`` when its files cannot be found locally
    (then the cache key still separates models by id)."""
    folder = resolve_model_dir(model_id, offline)
    return weights_digest(folder) if folder is not None else f"unknown:{model_id}"
