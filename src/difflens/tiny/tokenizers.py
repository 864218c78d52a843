"""Tiny offline tokenizers: a byte-level BPE CLIP tokenizer and a Unigram T5 tokenizer.

Both are built in process (no hub download) from a small list of common English words, so that
those words are single tokens, which keeps token-level analyses (attention maps) readable. Both are
fast (``tokenizers``-backed) tokenizers: they return offsets and round-trip through
``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, T5TokenizerFast

#: Words that encode to exactly one token in both tiny tokenizers.
WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "of", "cat", "dog", "red", "blue", "green", "car", "house", "tree",
    "on", "in", "with", "sitting", "bench", "happy", "sad", "painting", "mountain", "sky", "and",
    "astronaut", "riding", "horse", "beach", "city", "night", "sunset", "flower", "portrait", "woman",
    "man", "at", "is", "to", "by", "under", "over", "small", "big", "white", "black", "yellow", "bird",
    "boat", "river", "forest", "snow", "sun", "moon", "street", "table", "girl", "boy", "person",
    "standing", "running", "walking", "field", "water", "lake", "oil", "style", "art", "picture",
    "image", "old", "new", "cute", "dark", "light", "bright", "view", "landscape", "road", "window",
)

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 32
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to a symbol sequence, as ``tokenizers`` does."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(symbols))]
        pairs = [p for p in pairs if p[0] is not None]
        if not pairs:
            break
        _, i = min(pairs)
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def clip_vocab_and_merges(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of the tiny CLIP BPE: 256 byte symbols, their ``</w>`` forms, the merges
    that make every word of ``words`` a single token, then BOS and EOS as the two last ids."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_syms = list(bytes_to_unicode().values())
    tokens: list[str] = byte_syms + [s + "</w>" for s in byte_syms]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        pieces = _bpe(symbols, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            merged = pair[0] + pair[1]
            if merged not in known:
                known.add(merged)
                tokens.append(merged)
            pieces = _bpe(symbols, ranks)
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer() -> CLIPTokenizer:
    """A working byte-level BPE CLIP tokenizer (fast; BOS/EOS added, ``model_max_length`` 77)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def t5_pieces(words: tuple[str, ...] = WORDS) -> list[tuple[str, float]]:
    """Unigram pieces with scores: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then ``▁``, whole words
    (``▁word``), and single characters with and without the ``▁`` prefix."""
    import string

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for w in words:
        add("\u2581" + w, -5.0)
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    for c in chars:
        add("\u2581" + c, -9.0)
    for c in chars:
        add(c, -10.0)
    return pieces


def build_t5_tokenizer() -> T5TokenizerFast:
    """A working Unigram T5 tokenizer (fast; ``</s>`` appended, no sentinel ids, ``model_max_length``
    32; pipelines pad to their own ``max_sequence_length`` regardless)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=t5_pieces(), extra_ids=0, model_max_length=T5_MAX_LENGTH)
