"""The vocabulary of a GGUF file, read with the ``gguf`` package's vocab helpers.

* ``tokenizer.json`` with a byte-level BPE model -> ``gpt2`` vocabulary and merges;
  ``tokenizer.ggml.pre`` is chosen from the pre-tokenizer regex and an unknown one is an error,
  since a wrong or missing value silently degrades tokenisation;
* ``tokenizer.model`` (SentencePiece) -> ``llama`` vocabulary with scores.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..archs.hparams import MAX_VOCAB, _Hparams, config_file, text_config
from ..errors import TmacError
from ..format.model import SourceModel

# llama.cpp ``tokenizer.ggml.pre`` names by the Split regex in tokenizer.json (ByteLevel BPE).
_PRE_BY_REGEX: dict[str, str] = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+": "gpt-2",
}
KNOWN_PRE = sorted(set(_PRE_BY_REGEX.values()) | {"default"})


def detect_pre(tokenizer_json: dict, file: str) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json`` (raises for an unknown one)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    regexes: list[Any] = []
    byte_level: list[dict] = []
    if isinstance(pre, dict):
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        steps = [st for st in steps if isinstance(st, dict)] if isinstance(steps, list) else []
        for st in steps:
            if st.get("type") == "Split":
                pattern = st.get("pattern")
                regexes.append(pattern.get("Regex") if isinstance(pattern, dict) else None)
        byte_level = [st for st in steps if st.get("type") == "ByteLevel"]
    if not regexes and byte_level and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if len(regexes) == 1 and isinstance(regexes[0], str) and regexes[0] in _PRE_BY_REGEX:
        return _PRE_BY_REGEX[regexes[0]]
    shown = regexes[0] if regexes else json.dumps(pre)[:120]
    raise TmacError(f"unknown pre-tokenizer {shown!r}; llama.cpp would tokenise wrongly without the right "
                    f"tokenizer.ggml.pre: name it with --tokenizer-pre (e.g. {', '.join(KNOWN_PRE)})",
                    file=file, rule="known tokenizer.ggml.pre")

#: Exceptions the ``gguf`` package's vocab helpers raise on malformed files they read themselves.
_GGUF_VOCAB_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)


def _read_json(path: Path, rule: str = "tokenizer files readable") -> Any:
    """A JSON file, or a :class:`TmacError` naming it (bad UTF-8, bad JSON, nesting too deep)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TmacError(f"cannot read {path.name}: {e}", file=str(path), rule=rule) from None
    except RecursionError:
        raise TmacError(f"{path.name} is nested too deeply to read", file=str(path), rule=rule) from None


def _check_bpe_json(tj: Any, file: str) -> None:
    """The parts of a byte-level BPE ``tokenizer.json`` that the ``gguf`` vocab helpers and the GGUF
    writer use, checked up front: ``model.vocab`` maps strings to the ids 0..n-1 (each once),
    ``model.merges`` is all strings or all ``[str, str]`` pairs, ``added_tokens`` is a list of
    ``{"content": str, "id": int}`` objects."""
    def bad(what: str) -> TmacError:
        return TmacError(f"tokenizer.json: {what}", file=file, rule="tokenizer.json schema")

    model = tj["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise bad("model.vocab is not a non-empty object")
    if len(vocab) > MAX_VOCAB:
        raise bad(f"model.vocab has {len(vocab)} tokens, more than the {MAX_VOCAB} accepted")
    ids = list(vocab.values())
    if not all(type(i) is int for i in ids):
        raise bad("model.vocab holds an id that is not an integer")
    if min(ids) < 0 or max(ids) >= len(ids) or np.unique(np.asarray(ids, dtype=np.int64)).size != len(ids):
        raise bad(f"model.vocab ids are not 0..{len(ids) - 1}, each once (ids from {min(ids)} to {max(ids)})")
    merges = model.get("merges")
    if merges is not None:
        if not isinstance(merges, list):
            raise bad("model.merges is not a list")
        strings = all(isinstance(m, str) for m in merges)
        pairs = all(isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m) for m in merges)
        if not (strings or pairs):
            raise bad("model.merges is neither all strings nor all [string, string] pairs")
    added = tj.get("added_tokens", [])
    if not isinstance(added, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) and type(t.get("id")) is int
            and 0 <= t["id"] < MAX_VOCAB for t in added):
        raise bad("added_tokens is not a list of {\"content\": string, \"id\": integer} objects")


def _check_side_files(d: Path) -> None:
    """tokenizer_config.json / special_tokens_map.json / chat_template.json, when present, are JSON objects."""
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.json", "config.json"):
        if (d / name).is_file() and not isinstance(_read_json(d / name), dict):
            raise TmacError(f"{name} is not a JSON object", file=str(d / name), rule="tokenizer files readable")


def _tokenizer_dir(files: dict[str, Path], stack: list) -> Path | None:
    """One folder holding all tokenizer files (a temporary folder of links when they are spread out)."""
    if not files:
        return None
    parents = {Path(p).parent for p in files.values()}
    if len(parents) == 1:
        return parents.pop()
    tmp = tempfile.TemporaryDirectory(prefix="tmac-tok-")
    stack.append(tmp)
    for name, p in files.items():
        os.symlink(Path(p).resolve(), Path(tmp.name) / name)
    return Path(tmp.name)


@dataclass
class TokenizerData:
    """A vocabulary ready to write: ``model`` (``gpt2``/``llama``/``none``), ``pre``, tokens and specials."""

    model: str
    pre: str | None = None
    tokens: list[bytes] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    special: gguf.SpecialVocab | None = None

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.model == "none":
            return
        if self.pre:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.model == "llama":
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.special is not None:
            self.special.add_to_gguf(w, quiet=True)


def load_tokenizer(model: SourceModel, *, pre_override: str | None = None, notes: list[str]) -> TokenizerData:
    """Read the source's tokenizer with the ``gguf`` package's vocab helpers.

    * ``tokenizer.json`` with a byte-level BPE model -> ``gpt2`` vocabulary, merges, ``pre`` by regex;
    * ``tokenizer.model`` (SentencePiece) -> ``llama`` vocabulary with scores (needs ``sentencepiece``);
    * nothing -> ``none`` and a note (llama.cpp then loads the model but cannot tokenise).
    The vocabulary is padded with unused ``[PAD{i}]`` tokens up to the config's ``vocab_size``.
    """
    stack: list = []
    try:
        d = _tokenizer_dir(model.tokenizer_files, stack)
        if d is None or not ((d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file()):
            notes.append("no tokenizer files: the GGUF has no vocabulary (tokenizer.ggml.model = none)")
            return TokenizerData("none")
        n_vocab = (_Hparams(text_config(model.config), config_file(model)).int("vocab_size", hi=MAX_VOCAB + 1)
                   if model.config else None)
        _check_side_files(d)
        tj_path = d / "tokenizer.json"
        tj = _read_json(tj_path) if tj_path.is_file() else None
        if tj is not None and not isinstance(tj, dict):
            raise TmacError("tokenizer.json is not a JSON object", file=str(tj_path), rule="tokenizer.json schema")
        tm = tj.get("model", {}) if tj is not None else {}
        if not isinstance(tm, dict):
            raise TmacError("tokenizer.json: model is not an object", file=str(tj_path), rule="tokenizer.json schema")
        if tj is not None and tm.get("type") == "BPE" and not tm.get("byte_fallback", False):
            _check_bpe_json(tj, str(tj_path))
            try:
                vocab = gguf.vocab.BpeVocab(d)
                tokens = list(vocab.all_tokens())
            except _GGUF_VOCAB_ERRORS as e:
                raise TmacError(f"not a byte-level BPE tokenizer the gguf package reads: {type(e).__name__}: {e}",
                                file=str(tj_path), rule="tokenizer readable") from None
            pre = pre_override or detect_pre(tj, str(tj_path))
            data = TokenizerData("gpt2", pre=pre)
            for text, score, ttype in tokens:
                data.tokens.append(text if isinstance(text, bytes) else str(text).encode("utf-8"))
                data.types.append(int(ttype))
            _mark_added_specials(tj, data)
            load_merges = True
        elif (d / "tokenizer.model").is_file():
            try:
                vocab = gguf.vocab.SentencePieceVocab(d)
                tokens = list(vocab.all_tokens())
            except RuntimeError:
                raise TmacError("reading tokenizer.model needs the sentencepiece package (pip install sentencepiece)",
                                file=str(d / "tokenizer.model"), rule="tokenizer readable") from None
            except _GGUF_VOCAB_ERRORS as e:
                raise TmacError(f"cannot read tokenizer.model: {type(e).__name__}: {e}",
                                file=str(d / "tokenizer.model"), rule="tokenizer readable") from None
            data = TokenizerData("llama", pre=pre_override or "default")
            for text, score, ttype in tokens:
                data.tokens.append(text)
                data.scores.append(float(score))
                data.types.append(int(ttype))
            load_merges = False
        else:
            kind = tm.get("type", "unknown")
            raise TmacError(f"tokenizer.json holds a {kind!r} model with byte_fallback={tm.get('byte_fallback')!r}, "
                            "which needs tokenizer.model (SentencePiece) beside it", file=str(tj_path),
                            rule="tokenizer readable")
        if n_vocab is not None and n_vocab > len(data.tokens):
            first = len(data.tokens)
            data.tokens.extend(f"[PAD{i}]".encode("utf-8") for i in range(first, n_vocab))
            data.scores.extend([-1000.0] * (n_vocab - first))
            data.types.extend([int(gguf.TokenType.UNUSED)] * (n_vocab - first))
        if data.model == "gpt2":
            data.scores = []
        try:
            data.special = gguf.SpecialVocab(d, load_merges=load_merges, n_vocab=len(data.tokens))
        except _GGUF_VOCAB_ERRORS as e:
            raise TmacError(f"cannot read special tokens: {type(e).__name__}: {e}", file=str(d),
                            rule="tokenizer readable") from None
        if load_merges and not data.special.merges:
            raise TmacError("BPE tokenizer without merges (llama.cpp refuses such a vocabulary)", file=str(tj_path),
                            rule="BPE merges present")
        _check_special(data.special, str(d))
        return data
    finally:
        for s in stack:
            s.cleanup()


def _check_special(special: gguf.SpecialVocab, file: str) -> None:
    """What SpecialVocab passes through unchecked must still be writable: merges (from merges.txt too) as
    strings and a chat template as a string or a list of {name, template} strings."""
    if not all(isinstance(m, str) for m in special.merges):
        raise TmacError("a BPE merge is not a string", file=file, rule="tokenizer.json schema")
    t = special.chat_template
    if isinstance(t, list) and not all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                       and isinstance(x.get("template"), str) for x in t):
        raise TmacError("chat_template is a list whose entries are not {name, template} strings", file=file,
                        rule="tokenizer files readable")


def _mark_added_specials(tj: dict, data: TokenizerData) -> None:
    """Added tokens flagged ``special`` in tokenizer.json are CONTROL tokens (as llama.cpp's converter marks them)."""
    for t in tj.get("added_tokens") or []:
        i = t.get("id")
        if isinstance(i, int) and 0 <= i < len(data.types):
            data.types[i] = int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED)
