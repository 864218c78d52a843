"""Prompt words -> token positions in the text sequence the denoiser attends to.

The text sequence each family feeds its denoiser (DESIGN.md section 4):

* SD 1.x/2.x: one CLIP tokenizer, 77 positions.
* SDXL: two CLIP encoders on the same 77 positions (concatenated along the feature axis).
* SD3: CLIP (77, both CLIP encoders on the feature axis) then T5 (``max_sequence_length``) along the
  sequence.
* Flux: T5 only (``max_sequence_length``), no attention mask: padding positions receive attention.
* PixArt: T5 with an attention mask; the pipeline lower-cases and strips the prompt first.

Words are found with a regular expression on the text the pipeline tokenizes; a token belongs to the word
its character offsets (from the fast tokenizer) overlap. Repeated words are kept apart (``cat#1``,
``cat#2``); a word split into several tokens is aggregated by the mean or the max over its tokens.
The token ids computed here are compared with the ids the pipeline's text encoders actually received.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from difflens.attention.config import WORD_AGGREGATIONS
from difflens.errors import DifflensError

WORD_RE = re.compile(r"\w+(?:['’]\w+)*")


@dataclass(frozen=True)
class Segment:
    """A contiguous block of the text sequence produced by one tokenizer."""

    name: str                                  # "clip" or "t5"
    tokenizer: str | None                      # pipeline attribute of the tokenizer that defines positions
    encoders: tuple[tuple[str, str], ...]      # (text encoder attr, tokenizer attr) pairs fed these positions
    offset: int                                # first key index of the segment in the text sequence
    length: int                                # positions (max_length the pipeline pads/truncates to)


@dataclass(frozen=True)
class Token:
    key: int            # index in the denoiser's text sequence
    segment: str
    position: int       # index inside its segment
    id: int
    text: str
    kind: str           # "prompt", "start", "end", "pad"
    word: int | None    # index into PromptTokens.words
    span: tuple[int, int]


@dataclass(frozen=True)
class Word:
    index: int
    text: str
    start: int
    end: int
    occurrence: int     # 1-based among words with the same (lower-cased) text
    label: str          # text, or text#occurrence when the word repeats
    keys: tuple[int, ...]  # key indices of its tokens, every segment


@dataclass
class PromptTokens:
    text: str                        # the prompt as the pipeline tokenizes it
    segments: list[Segment]
    tokens: list[Token]
    words: list[Word]
    text_len: int
    expected_ids: dict[str, list[int]] = field(default_factory=dict)  # encoder attr -> ids


def preprocess_prompt(family: str, prompt: str) -> str:
    """The text the pipeline tokenizes: PixArt lower-cases and strips (``clean_caption=False``)."""
    if family == "pixart":
        return prompt.lower().strip()
    return prompt


def call_default(pipe: Any, name: str, fallback: int) -> int:
    """Default value of a ``pipe.__call__`` argument (e.g. ``max_sequence_length``)."""
    import inspect

    param = inspect.signature(pipe.__call__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        return fallback
    return int(param.default)


def text_segments(pipe: Any, family: str, max_sequence_length: int | None = None) -> list[Segment]:
    """The segments of the text sequence for this pipeline family."""

    def clip_len() -> int:
        length = getattr(pipe, "tokenizer_max_length", None)
        if length is None:
            tok = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
            length = tok.model_max_length if tok is not None else 77
        return int(length)

    def t5_len() -> int:
        return int(max_sequence_length or call_default(pipe, "max_sequence_length", 256))

    def have(attr: str) -> bool:
        return getattr(pipe, attr, None) is not None

    if family == "sd":
        return [Segment("clip", "tokenizer", (("text_encoder", "tokenizer"),), 0, clip_len())]
    if family == "sdxl":
        pairs = tuple((e, t) for e, t in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
                      if have(e) and have(t))
        return [Segment("clip", pairs[0][1] if pairs else None, pairs, 0, clip_len())]
    if family == "sd3":
        pairs = tuple((e, t) for e, t in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
                      if have(e) and have(t))
        n = clip_len()
        t5 = (("text_encoder_3", "tokenizer_3"),) if have("text_encoder_3") and have("tokenizer_3") else ()
        return [Segment("clip", pairs[0][1] if pairs else None, pairs, 0, n),
                Segment("t5", "tokenizer_3" if t5 else None, t5, n, t5_len())]
    if family == "flux":
        return [Segment("t5", "tokenizer_2", (("text_encoder_2", "tokenizer_2"),), 0, t5_len())]
    if family == "pixart":
        return [Segment("t5", "tokenizer", (("text_encoder", "tokenizer"),), 0, t5_len())]
    raise DifflensError(f"the attention mode does not know how {family} pipelines encode prompts.",
                        "use an SD 1.x/2.x, SDXL, SD3, Flux or PixArt text-to-image pipeline")


def find_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for each word of ``text`` (letters/digits, inner apostrophes kept)."""
    return [(m.group(0), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def _truncation_error(tok: Any, attr: str, segment: str, text: str, max_length: int) -> None:
    ids = tok(text, truncation=False).input_ids
    if len(ids) > max_length:
        removed = tok.decode(ids[max_length - 1:], skip_special_tokens=True).strip()
        hint = "shorten the prompt" + (", or raise --max-sequence-length" if segment == "t5" else
                                       " (CLIP encoders hold 77 positions)")
        raise DifflensError(
            f"the prompt is {len(ids)} tokens for the {segment.upper()} tokenizer ({attr}), which holds "
            f"{max_length}; the pipeline would truncate {removed!r}.", hint)


def tokenize_prompt(pipe: Any, family: str, prompt: str, segments: list[Segment]) -> PromptTokens:
    """Tokens and words of ``prompt``, laid out as the denoiser's text sequence.

    Raises when the prompt is longer than an encoder holds (the pipeline would silently truncate it).
    """
    text = preprocess_prompt(family, prompt)
    spans = find_words(text)
    word_of_char: dict[int, int] = {}
    for wi, (_, s, e) in enumerate(spans):
        for c in range(s, e):
            word_of_char[c] = wi
    tokens: list[Token] = []
    expected: dict[str, list[int]] = {}
    keys_of_word: dict[int, list[int]] = {i: [] for i in range(len(spans))}
    for seg in segments:
        for enc_attr, tok_attr in seg.encoders:
            tok = getattr(pipe, tok_attr)
            _truncation_error(tok, tok_attr, seg.name, text, seg.length)
            expected[enc_attr] = list(tok(text, padding="max_length", max_length=seg.length,
                                          truncation=True).input_ids)
        if seg.tokenizer is None:
            # No tokenizer for this block (SD3 without T5): zeros, no words.
            for pos in range(seg.length):
                tokens.append(Token(seg.offset + pos, seg.name, pos, -1, "", "pad", None, (0, 0)))
            continue
        tok = getattr(pipe, seg.tokenizer)
        enc = tok(text, padding="max_length", max_length=seg.length, truncation=True,
                  return_offsets_mapping=True, return_special_tokens_mask=True)
        ids = list(enc.input_ids)
        pieces = tok.convert_ids_to_tokens(ids)
        seen_prompt = False
        end_done = False
        rows = zip(ids, enc.offset_mapping, enc.special_tokens_mask, strict=True)
        for pos, (tid, (s, e), special) in enumerate(rows):
            key = seg.offset + pos
            if special or (s == e == 0 and pos > 0 and tid in (tok.pad_token_id, tok.eos_token_id)):
                if pos == 0 and not seen_prompt and tid == tok.bos_token_id:
                    kind = "start"
                elif tid == tok.eos_token_id and not end_done:
                    kind, end_done = "end", True
                else:
                    kind = "pad"
                tokens.append(Token(key, seg.name, pos, int(tid), str(pieces[pos]), kind, None, (0, 0)))
                continue
            seen_prompt = True
            wi = None
            for c in range(int(s), int(e)):
                if c in word_of_char:
                    wi = word_of_char[c]
                    break
            if wi is not None:
                keys_of_word[wi].append(key)
            tokens.append(Token(key, seg.name, pos, int(tid), str(pieces[pos]), "prompt", wi,
                                (int(s), int(e))))
    counts = Counter(w.lower() for w, _, _ in spans)
    seen: Counter[str] = Counter()
    words: list[Word] = []
    for wi, (w, s, e) in enumerate(spans):
        seen[w.lower()] += 1
        occ = seen[w.lower()]
        label = w if counts[w.lower()] == 1 else f"{w}#{occ}"
        words.append(Word(wi, w, s, e, occ, label, tuple(keys_of_word[wi])))
    text_len = sum(seg.length for seg in segments)
    return PromptTokens(text=text, segments=segments, tokens=tokens, words=words, text_len=text_len,
                        expected_ids=expected)


def select_words(pt: PromptTokens, wanted: list[str] | None) -> list[Word]:
    """The words to report: every word of the prompt, or every occurrence of each word in ``wanted``
    (case-insensitive). Raises for a word that is not in the prompt."""
    words = [w for w in pt.words if w.keys]
    if not wanted:
        return words
    chosen: list[Word] = []
    for want in wanted:
        hits = [w for w in words if w.text.lower() == want.strip().lower()]
        if not hits:
            shown = ", ".join(dict.fromkeys(w.text for w in words))
            raise DifflensError(f"--words: {want.strip()!r} is not a word of the prompt ({shown}).",
                                "pass words that appear in --prompt, comma-separated")
        chosen += [w for w in hits if w not in chosen]
    return sorted(chosen, key=lambda w: w.index)


def select_tokens(pt: PromptTokens, words: list[Word], wanted: list[str] | None,
                  all_tokens: bool = False) -> list[Token]:
    """Tokens whose maps are kept: tokens of the chosen words when ``--words`` was given; else every real
    prompt token (start/end/padding excluded), or every position with ``all_tokens``."""
    if all_tokens:
        return list(pt.tokens)
    if wanted:
        keys = {k for w in words for k in w.keys}
        return [t for t in pt.tokens if t.key in keys]
    return [t for t in pt.tokens if t.kind == "prompt"]


def word_groups(words: list[Word], tokens: list[Token]) -> list[list[int]]:
    """For each word, the indices of its tokens in the kept-token axis."""
    pos = {t.key: i for i, t in enumerate(tokens)}
    return [[pos[k] for k in w.keys if k in pos] for w in words]


def aggregate_words(token_maps: Any, groups: list[list[int]], mode: str = "mean") -> Any:
    """Word maps from token maps (..., T, h, w) -> (..., W, h, w): mean or max over each word's tokens."""
    import torch

    if mode not in WORD_AGGREGATIONS:
        raise DifflensError(f"unknown word aggregation {mode!r}.",
                            f"use one of {', '.join(WORD_AGGREGATIONS)}")
    t = torch.as_tensor(token_maps)
    out = []
    for g in groups:
        sel = t[..., g, :, :]
        out.append(sel.mean(dim=-3) if mode == "mean" else sel.amax(dim=-3))
    if not out:
        return t.new_zeros((*t.shape[:-3], 0, *t.shape[-2:]))
    return torch.stack(out, dim=-3)


def check_ids(expected: dict[str, list[int]], recorded: dict[str, list[int]]) -> dict[str, Any]:
    """Compare the ids difflens computed with the ids each text encoder received (first call = prompt)."""
    detail: dict[str, Any] = {}
    ok = True
    for enc, ids in expected.items():
        got = recorded.get(enc)
        same = got is not None and list(got) == list(ids)
        ok &= same
        detail[enc] = {"match": same, "recorded": got is not None, "length": len(ids)}
    return {"ok": ok and bool(expected), "encoders": detail}
