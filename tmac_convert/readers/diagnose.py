"""Why no reader recognises a source: one sentence naming the actual cause, for the error message.

Called only after every reader's ``detect`` said no, so it may be slower and more thorough than
detection: it looks at the folder's files, a file's first bytes, a safetensors header.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TmacError
from ..format.gguf_file import GGUF_MAGIC

_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz")


def _first_bytes(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _show(raw: bytes) -> str:
    """First bytes as hex and, where printable, as text: ``'68656c6c' ('hell')``."""
    text = raw.decode("ascii", "replace")
    shown = f" ({text!r})" if raw and all(32 <= b < 127 or b in (9, 10, 13) for b in raw) else ""
    return f"{raw.hex()}{shown}"


def _file_problem(path: Path) -> str:
    """The cause for one file that no reader took."""
    suffix = path.suffix.lower()
    size = path.stat().st_size
    head = _first_bytes(path)
    if size == 0:
        return "the file is empty"
    if suffix == ".gguf" or (head[:4] != GGUF_MAGIC and head[:2] == b"GG"):
        return (f"not a GGUF file: it starts with bytes {_show(head[:4])}, a GGUF file starts with "
                f"{_show(GGUF_MAGIC)}")
    if suffix == ".safetensors":
        from .safetensors_io import read_header

        try:
            read_header(path)
        except TmacError as e:
            msg, prefix = str(e), f"file {e.file}: "
            msg = msg[len(prefix):] if msg.startswith(prefix) else msg
            return f"not a valid safetensors file: {msg} (it starts with bytes {_show(head)})"
        if not (path.parent / "config.json").is_file():
            return (f"a safetensors file with no config.json beside it in {path.parent.resolve()}: the converter needs the "
                    "model's config.json (architecture, heads, quantisation) next to its weights")
        return "a safetensors file whose config.json names no architecture or quantisation that a reader knows"
    if suffix == ".json":
        return "a JSON file, not weights: give the model's folder (config.json and *.safetensors) instead"
    return (f"not a format this tool reads (it starts with bytes {_show(head)}); expected an HF folder with "
            "config.json and *.safetensors, or a GGUF file")


def _folder_problem(path: Path) -> str:
    """The cause for a folder that no reader took."""
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as e:
        return f"cannot list the folder: {e.strerror or e}"
    if not names:
        return "the folder is empty"
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    st = [n for n in names if n.lower().endswith(".safetensors")]
    has_config = "config.json" in names
    if ggufs and not st:
        which = f"give the file itself: {path / ggufs[0]}" if len(ggufs) == 1 else \
            f"give one of them as the source (e.g. {path / ggufs[0]})"
        return f"a folder holding GGUF files ({', '.join(ggufs[:3])}), which are read one file at a time: {which}"
    if st and not has_config:
        return (f"the folder has safetensors weights ({', '.join(st[:3])}) but no config.json: the converter needs "
                "the model's config.json (architecture, heads, quantisation) beside the weights")
    if has_config and not st:
        return "the folder has a config.json but no *.safetensors weights"
    if has_config:
        return ("config.json names no architecture or quantisation that a reader knows (see `architectures` and "
                "`quantization_config` in it)")
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"no model files here ({shown}); expected config.json and *.safetensors, or a GGUF file"


def why_unrecognised(path: Path) -> str:
    """One sentence on why no reader accepts ``path`` (an existing file or folder)."""
    path = Path(path)
    try:
        return _folder_problem(path) if path.is_dir() else _file_problem(path)
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
