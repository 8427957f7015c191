"""The neutral core: what tmac-convert's files *are*, shared by readers, writers and commands.

Readers and writers import this package and never each other (the gguf-py ``constants`` +
``quants`` of this project):

* :mod:`.runtime` — the T-MAC type-id table (``I1..I4`` ids and file types of each fork);
* :mod:`.rules` — bit widths, tile rules and the ``scales_size`` of a tensor (the kcfg field);
* :mod:`.tensor` — the intermediate form (:class:`QuantTensor`, :class:`FloatTensor`, :class:`TensorInfo`);
* :mod:`.model` — :class:`SourceModel`, a model opened by a reader;
* :mod:`.gguf_file` — the one bounded GGUF parser (one record type; parsed once per file);
* :mod:`.tmac_keys` — the self-describing ``tmac.*`` keys;
* :mod:`.kv` — typed key/values (carry-over, JSON form);
* :mod:`.npz` — the npz container schema;
* :mod:`.encodings` — the one registry of output encodings (T-MAC ``I`` types, F16/F32 and, in
  :mod:`.stock`, llama.cpp's block types), each with its exactness rule, encoder and check.

The encodings use the layout engine and are imported on demand (``tmac_convert.format.encodings``),
so importing this package stays light.
"""

from .gguf_file import KV, GGUFFile, TensorRecord, is_gguf, parse, parse_header, read_bytes, scan, standard_nbytes
from .model import SourceModel
from .runtime import DEFAULT_RUNTIME, RUNTIMES, TMAC_ONLY_TYPE_IDS, Runtime, get_runtime, gguf_type_label, type_name
from .tensor import FloatTensor, QuantTensor, Tensor, TensorInfo
from .tmac_keys import CONVERTER, TmacKeys, TmacMeta

__all__ = ["KV", "GGUFFile", "TensorRecord", "is_gguf", "parse", "parse_header", "read_bytes", "scan",
           "standard_nbytes", "SourceModel", "DEFAULT_RUNTIME", "RUNTIMES", "TMAC_ONLY_TYPE_IDS", "Runtime",
           "get_runtime", "gguf_type_label", "type_name", "FloatTensor", "QuantTensor", "Tensor", "TensorInfo",
           "CONVERTER", "TmacKeys", "TmacMeta"]
