"""The T-MAC encoding: ``I{bits}`` tensors holding the Format A blob (section 1 of the format notes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ...errors import TmacError
from ...layouts import blob_nbytes, pack, unpack
from ...layouts.kcfg import DEFAULT_ACT_GROUP
from ..tensor import QuantTensor, Tensor
from .base import Encoding, TensorPlan

if TYPE_CHECKING:
    from ..runtime import Runtime

#: Seed of the verification activations (the same for every tensor and run: reproducible reports).
VERIFY_SEED = 0


class TmacEncoding(Encoding, name="tmac", out_type="tmac"):
    """T-MAC ``I{bits}``: the Format A blob (permuted weights, then float32 scales and zero offsets)."""

    quantized = True

    def nbytes(self, plan: TensorPlan) -> int:
        m0, k = plan.shape
        return blob_nbytes(m0, k, plan.bits, plan.group_size or k, plan.zero_point, plan.per_tensor_scale)

    def gguf_type(self, plan: TensorPlan, runtime: "Runtime") -> int:
        return runtime.type_ids[plan.bits]

    def type_label(self, plan: TensorPlan) -> str:
        return f"I{plan.bits}"

    def file_type(self, runtime: "Runtime") -> int:
        return runtime.file_type

    def encode(self, tensor: Tensor, plan: TensorPlan) -> np.ndarray:
        return self.encode_into(tensor, plan, lambda n: np.empty(n, np.uint8))

    def encode_into(self, tensor: Tensor, plan: TensorPlan, alloc: Callable[[int], np.ndarray]) -> np.ndarray:
        if not isinstance(tensor, QuantTensor):
            raise TmacError("expected a quantised tensor", tensor=plan.name, rule="tensor kind matches plan")
        assert plan.tiles is not None
        return pack(tensor.codes, tensor.scales, tensor.zeros, bits=tensor.bits, bm=plan.tiles.bm,
                    kfactor=plan.tiles.kfactor, threads=1, name=plan.name, out=alloc(self.nbytes(plan)))

    def decode(self, data: np.ndarray, plan: TensorPlan) -> QuantTensor:
        assert plan.tiles is not None
        m0, k = plan.shape
        gs = k if plan.per_tensor_scale else plan.group_size
        codes, scales, zeros = unpack(data, m=m0, k=k, bits=plan.bits, group_size=gs, zero_point=plan.zero_point,
                                      bm=plan.tiles.bm, kfactor=plan.tiles.kfactor, threads=1, name=plan.name)
        if plan.per_tensor_scale != (scales.ndim == 1):
            raise TmacError("the blob length says " + ("per-tensor" if scales.ndim == 1 else "group") +
                            " scales, the file's metadata says otherwise", tensor=plan.name, rule="blob length")
        return QuantTensor(plan.name, codes, scales, zeros, bits=plan.bits, group_size=gs)

    def check(self, tensor: Tensor, data: np.ndarray, plan: TensorPlan) -> Any:
        """Run the bundled LUT kernel on the blob and compare with float64 math on the source's weights
        (:func:`tmac_convert.proof.verify_tensor`); raises :class:`VerificationError`
        when the layout proof or the int8 judgement fails."""
        from ...proof import check, verify_tensor  # the kernels are loaded only when something is verified

        if not isinstance(tensor, QuantTensor) or plan.tiles is None:
            raise TmacError("expected a quantised tensor with tiles", tensor=plan.name, rule="tensor kind matches plan")
        k = plan.shape[1]
        ags = plan.act_group_size if plan.act_group_size is not None else DEFAULT_ACT_GROUP
        # one thread per tensor: the pipeline already runs one tensor per worker
        result = verify_tensor(tensor, data, bm=plan.tiles.bm, kfactor=plan.tiles.kfactor,
                               act_group_size=k if ags == -1 else ags, seed=VERIFY_SEED, threads=1)
        check(result)
        return result
