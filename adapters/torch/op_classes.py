"""``nodes.op_class`` for PyTorch modules and functional ops (spec: the op vocabulary).

Modules of ``torch.nn`` are classified by type (so a subclass of ``nn.ReLU`` is a
rectifier whatever its name); other modules (a library's ``LlamaRMSNorm``, a user's block)
by the shared name table of :mod:`tracefmt.op_classes`, with one structural correction: a
"conv" whose weight is a matrix is a linear layer (Hugging Face's GPT-2 ``Conv1D``).
"""

from __future__ import annotations

from torch import nn

from tracefmt.op_classes import OpClass, classify_op_type

__all__ = ["module_op_class", "functional_op_class"]

# Checked in order with isinstance: subclasses first where torch nests them.
_TYPES: tuple[tuple[type | tuple[type, ...], OpClass], ...] = (
    ((nn.modules.loss._Loss,), OpClass.LOSS),
    ((nn.Linear, nn.Bilinear), OpClass.LINEAR),
    ((nn.modules.conv._ConvNd,), OpClass.CONV),
    (
        (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
        + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
        OpClass.NORM,
    ),
    ((nn.ReLU, nn.ReLU6, nn.Threshold), OpClass.RECTIFIER),
    ((nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.RReLU), OpClass.LEAKY_RECTIFIER),
    ((nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish), OpClass.SMOOTH_ACTIVATION),
    ((nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink), OpClass.BOUNDED_ACTIVATION),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d), OpClass.SOFTMAX),
    ((nn.MultiheadAttention,), OpClass.ATTENTION),
    ((nn.Embedding, nn.EmbeddingBag), OpClass.EMBEDDING),
    (
        (
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
            nn.modules.pooling._LPPoolNd,
        ),
        OpClass.POOLING,
    ),
    ((nn.modules.dropout._DropoutNd,), OpClass.DROPOUT),
    ((nn.RNNBase, nn.modules.rnn.RNNCellBase), OpClass.RECURRENT),
    (
        (
            nn.Flatten,
            nn.Unflatten,
            nn.Identity,
            nn.PixelShuffle,
            nn.PixelUnshuffle,
            nn.Upsample,
            nn.modules.padding._ReflectionPadNd,
            nn.ZeroPad2d,
            nn.ConstantPad2d,
        ),
        OpClass.RESHAPE,
    ),
    ((nn.Sequential, nn.ModuleList, nn.ModuleDict), OpClass.CONTAINER),
)


def module_op_class(module: nn.Module, *, container: bool) -> OpClass:
    """The op class of a module: by ``torch.nn`` type, else by class name.

    Args:
        module: The module.
        container: The module has children (it is a container node of the trace).
    """
    for types, cls in _TYPES:
        if isinstance(module, types):
            return cls
    cls = classify_op_type(type(module).__name__, container=container)
    if cls is OpClass.CONV:
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2:
            return OpClass.LINEAR
    return cls


def functional_op_class(op: str, activation_inputs: int) -> OpClass:
    """The op class of a torch function called between modules (``add``, ``relu``, ``cat``).

    Args:
        op: The function's name as recorded in ``op_type``.
        activation_inputs: How many of its inputs are recorded activations: an ``add`` of two
            is a residual connection, an ``add`` of one and a constant is elementwise.
    """
    cls = classify_op_type(op)
    if cls is OpClass.RESIDUAL_ADD and activation_inputs < 2:
        return OpClass.ELEMENTWISE
    return cls
