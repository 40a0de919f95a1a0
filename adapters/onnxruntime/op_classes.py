"""``nodes.op_class`` for ONNX operators (spec: the op vocabulary).

The operator type decides most classes through the shared name table of
:mod:`tracefmt.op_classes`; a few depend on what the node reads: ``Add`` of two computed
tensors is a residual connection (of a tensor and a constant, elementwise), ``MatMul``
against an initializer is a linear layer, ``Gather`` from an initializer is an embedding.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tracefmt.op_classes import OpClass, classify_op_type

__all__ = ["onnx_op_class"]


def onnx_op_class(op_type: str, inputs: Sequence[str], constants: Collection[str]) -> OpClass:
    """The op class of one ONNX node.

    Args:
        op_type: The operator type, domain-prefixed outside the default domain.
        inputs: The node's input tensor names ('' for an omitted optional input).
        constants: Names of tensors that are initializers or outputs of ``Constant`` nodes.
    """
    computed = [n for n in inputs if n and n not in constants]
    base = op_type.rsplit(".", 1)[-1]
    if base in ("MatMul", "MatMulInteger", "FusedMatMul"):
        return OpClass.LINEAR if len(computed) < len([n for n in inputs if n]) else OpClass.OTHER
    if base == "Gather" and inputs and inputs[0] in constants:
        return OpClass.EMBEDDING
    cls = classify_op_type(op_type)
    if cls is OpClass.RESIDUAL_ADD and len(computed) < 2:
        return OpClass.ELEMENTWISE
    return cls
