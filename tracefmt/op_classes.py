"""The op vocabulary (spec section 'Enumerations', column ``nodes.op_class``).

Analyzers decide what a node *is* (a rectifier, a normalisation, a bounded activation)
from its ``op_class``, never from the spelling of a framework's ``op_type``: one analyzer
then serves PyTorch, ONNX, JAX and Keras traces alike. Adapters fill the column from their
framework's types; :func:`classify_op_type` is the shared name table they fall back on, and
the rule readers apply to traces written before format 1.1, which lack the column.
"""

from __future__ import annotations

import re
from enum import StrEnum

from .errors import TraceFormatError

__all__ = ["OpClass", "classify_op_type", "node_op_classes", "RECTIFYING", "ACTIVATIONS"]


class OpClass(StrEnum):
    """What kind of computation a node performs, independent of the framework."""

    LINEAR = "linear"  #: dense / matmul against weights
    CONV = "conv"  #: convolution or transposed convolution
    NORM = "norm"  #: batch / layer / group / RMS / instance normalisation
    RECTIFIER = "rectifier"  #: exact zeros for negative inputs (ReLU, ReLU6, Threshold)
    LEAKY_RECTIFIER = "leaky-rectifier"  #: piecewise linear, non-zero negative slope (LeakyReLU, PReLU, ELU)
    SMOOTH_ACTIVATION = "smooth-activation"  #: unbounded smooth non-linearity (GELU, SiLU, Mish)
    BOUNDED_ACTIVATION = "bounded-activation"  #: saturating non-linearity (Sigmoid, Tanh)
    SOFTMAX = "softmax"  #: softmax and log-softmax
    ATTENTION = "attention"  #: an attention block or op
    EMBEDDING = "embedding"  #: a lookup table
    POOLING = "pooling"  #: max / average / adaptive pooling
    RESIDUAL_ADD = "residual-add"  #: the sum of two activations
    ELEMENTWISE = "elementwise"  #: other pointwise arithmetic (Mul, Div, scaling)
    RESHAPE = "reshape"  #: data movement without arithmetic
    DROPOUT = "dropout"  #: dropout and stochastic depth
    RECURRENT = "recurrent"  #: LSTM, GRU, RNN layers and cells
    LOSS = "loss"  #: a loss module or op
    CONTAINER = "container"  #: groups other nodes, computes nothing itself
    OTHER = "other"  #: none of the above


#: Classes whose output is a rectified activation (exact zeros on the negative side).
RECTIFYING = frozenset({OpClass.RECTIFIER})
#: Every activation-function class.
ACTIVATIONS = frozenset(
    {OpClass.RECTIFIER, OpClass.LEAKY_RECTIFIER, OpClass.SMOOTH_ACTIVATION, OpClass.BOUNDED_ACTIVATION, OpClass.SOFTMAX}
)

# Exact names (lower case, without '_'), across PyTorch modules and functional ops, ONNX
# operators, Keras layers and Flax/JAX functions. Checked before the patterns below.
_EXACT: dict[str, OpClass] = {}
for _cls, _names in {
    OpClass.LINEAR: "linear bilinear lazylinear gemm matmul dense einsumdense addmm mm bmm",
    OpClass.CONV: "conv convtranspose convinteger qlinearconv conv1d conv2d conv3d convtranspose1d convtranspose2d convtranspose3d",
    OpClass.NORM: "batchnormalization batchnorm1d batchnorm2d batchnorm3d layernorm layernormalization groupnorm groupnormalization "
    "instancenormalization instancenorm1d instancenorm2d rmsnorm simplifiedlayernormalization skiplayernormalization localresponsenorm "
    "lpnormalization meanvariancenormalization batchnorm layernorm groupnorm syncbatchnorm unitnormalization",
    OpClass.RECTIFIER: "relu relu6 threshold",
    OpClass.LEAKY_RECTIFIER: "leakyrelu prelu elu selu celu rrelu thresholdedrelu",
    OpClass.SMOOTH_ACTIVATION: "gelu silu swish mish softplus hardswish quickgelu newgeluactivation geluactivation fastgelu biasgelu gelutanh",
    OpClass.BOUNDED_ACTIVATION: "sigmoid tanh hardsigmoid hardtanh softsign logsigmoid tanhshrink hardshrink softshrink",
    OpClass.SOFTMAX: "softmax logsoftmax softmin softmax2d",
    OpClass.ATTENTION: "multiheadattention scaleddotproductattention attention multiheadattentionlayer dotproductattention",
    OpClass.EMBEDDING: "embedding embeddingbag",
    OpClass.POOLING: "maxpool averagepool globalaveragepool globalmaxpool lppool globallppool maxpool1d maxpool2d maxpool3d avgpool1d "
    "avgpool2d avgpool3d adaptiveavgpool1d adaptiveavgpool2d adaptiveavgpool3d adaptivemaxpool1d adaptivemaxpool2d adaptivemaxpool3d "
    "maxpooling1d maxpooling2d maxpooling3d averagepooling1d averagepooling2d averagepooling3d globalaveragepooling1d "
    "globalaveragepooling2d globalmaxpooling1d globalmaxpooling2d fractionalmaxpool2d avgpool maxpool roialign maxroipool",
    OpClass.RESIDUAL_ADD: "add iadd radd",
    OpClass.ELEMENTWISE: "mul sub div pow sqrt rsqrt exp log abs neg reciprocal erf sin cos clip clamp where min max mean sum "
    "imul isub itruediv truediv floordiv rsub rmul rtruediv scale identity multiply subtract divide square cumsum reducemean "
    "reducesum reducemax reducemin reduceprod reducel2 reducel1 reducesumsquare matmulscale layerscale not and or equal greater less "
    "cast floor ceil round sign mod bitshift isnan isinf",
    OpClass.RESHAPE: "reshape transpose flatten unflatten concat cat split slice gather gatherelements gathernd squeeze unsqueeze "
    "expand tile pad view permute contiguous chunk narrow stack shape size constantofshape range constant pixelshuffle pixelunshuffle "
    "upsample resize depthtospace spacetodepth zeropadding1d zeropadding2d cropping2d repeat repeatinterleave getitem index select "
    "transpose2d einsum roll unfold fold",
    OpClass.DROPOUT: "dropout dropout1d dropout2d dropout3d alphadropout featurealphadropout droppath stochasticdepth spatialdropout1d "
    "spatialdropout2d gaussiandropout gaussiannoise",
    OpClass.RECURRENT: "lstm gru rnn lstmcell grucell rnncell simplernn bidirectional",
    OpClass.LOSS: "crossentropyloss mseloss l1loss nllloss bcewithlogitsloss bceloss huberloss smoothl1loss kldivloss ctcloss "
    "softmaxcrossentropyloss negativeloglikelihoodloss crossentropy mse",
    OpClass.CONTAINER: "sequential modulelist moduledict model functional",
}.items():
    for _n in _names.split():
        _EXACT[_n] = _cls

# Patterns for names no table lists (a model's own module classes: 'LlamaRMSNorm',
# 'GPT2Attention', 'ConvNextLayerScale'), tried in order: the first match wins.
_PATTERNS: tuple[tuple[re.Pattern[str], OpClass], ...] = tuple(
    (re.compile(p), c)
    for p, c in (
        (r"loss$", OpClass.LOSS),
        (r"dropout|droppath|stochasticdepth", OpClass.DROPOUT),
        (r"attention|selfattn|attn$", OpClass.ATTENTION),
        (r"embedding|embed$", OpClass.EMBEDDING),
        (r"(batch|layer|group|instance|rms)norm|normali[sz]ation|norm$", OpClass.NORM),
        (r"convtranspose|conv\dd|conv$|conv1d|convolution", OpClass.CONV),
        (r"pool", OpClass.POOLING),
        (r"lstm|gru|rnn", OpClass.RECURRENT),
        (r"leakyrelu|prelu|^elu|selu|celu", OpClass.LEAKY_RECTIFIER),
        (r"^relu|relu6?$", OpClass.RECTIFIER),
        (r"gelu|silu|swish|mish|softplus", OpClass.SMOOTH_ACTIVATION),
        (r"sigmoid|tanh", OpClass.BOUNDED_ACTIVATION),
        (r"softmax", OpClass.SOFTMAX),
        (r"layerscale|scale$", OpClass.ELEMENTWISE),
        (r"linear|dense|projection$", OpClass.LINEAR),
    )
)


def _key(op_type: str) -> str:
    # 'ai.onnx.ml.LinearRegressor' -> 'linearregressor'; 'torch.nn.ReLU' -> 'relu'
    name = (op_type or "").rsplit(".", 1)[-1]
    return name.replace("_", "").lower()


def classify_op_type(op_type: str, *, container: bool = False) -> OpClass:
    """The op class of an operation or module named ``op_type``, by name alone.

    This is the shared fallback of every adapter and the rule for traces without an
    ``op_class`` column (format 1.0). Names are compared without case, domain prefix or
    underscores; unknown names are matched by pattern (``LlamaRMSNorm`` is a norm).

    Args:
        op_type: A framework's name for the operation ('ReLU', 'Conv', 'relu', 'Dense').
        container: The node only groups others; a name that says nothing more is then a
            container rather than ``other``. Defaults to False.

    Returns:
        The op class; :attr:`OpClass.OTHER` when nothing matches.
    """
    key = _key(op_type)
    found = _EXACT.get(key)
    if found is None:
        found = next((c for p, c in _PATTERNS if p.search(key)), OpClass.OTHER)
    if container and found in (OpClass.OTHER, OpClass.RESHAPE, OpClass.ELEMENTWISE):
        return OpClass.CONTAINER
    return found


def node_op_classes(op_class: list[str | None], op_type: list[str], container: list[bool]) -> tuple[list[OpClass], int]:
    """The op class of every node: the ``op_class`` column where set, else by name.

    Args:
        op_class: The ``nodes.op_class`` column (all None for a format 1.0 trace).
        op_type: The ``nodes.op_type`` column.
        container: The ``nodes.container`` column.

    Returns:
        The classes, and how many were inferred from ``op_type`` because the trace did not
        state them (analyzers report that as an info finding).
    """
    out: list[OpClass] = []
    inferred = 0
    for cls, op, cont in zip(op_class, op_type, container):
        if cls is None:
            inferred += 1
            out.append(classify_op_type(op or "", container=bool(cont)))
        else:
            try:
                out.append(OpClass(cls))
            except ValueError:
                # Enumerations are closed within a major version (spec 15): bad input, not a bug.
                raise TraceFormatError(
                    f"table 'nodes' column 'op_class': {cls!r} is not an op class; known: {', '.join(c.value for c in OpClass)}"
                ) from None
    return out, inferred
