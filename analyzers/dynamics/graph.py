"""The state-transition graph (Graphviz): states as nodes, observed transitions as edges.

Each node shows its state, the checkpoints spent in it and its self-transition
probability; each edge i -> j that occurs in some Viterbi path shows the fitted
transition probability A_ij, how often it was observed, and the top features that drive
it (:func:`tracefmt.analyzers.dynamics.posterior.transition_drivers`), with an arrow for
the sign of the gradient (up: raising the feature favours j).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tracefmt.errors import MissingDependencyError

from ..escaping import dot_lines, dot_text
from .plots import state_colour

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .posterior import EdgeDrivers

__all__ = ["transition_graph", "render_png", "graph_figure"]


def transition_graph(transmat: np.ndarray, dwell_total: np.ndarray, edges: list[EdgeDrivers], *, title: str = "") -> Any:
    """Build the transition graph as a :class:`graphviz.Digraph`.

    Args:
        transmat: Fitted transition matrix (K, K).
        dwell_total: Checkpoints spent in each state over all runs (K,).
        edges: Observed transitions with their drivers.
        title: Graph label. Defaults to none.

    Returns:
        The digraph (``.source`` is the DOT text).
    """
    try:
        import graphviz
    except ImportError:  # pragma: no cover - the analyzers extra installs it
        raise MissingDependencyError("graphviz", "analyzers", "the state-transition graph") from None
    # Left to right reads well for a few states; a longer chain would be too wide for a page.
    rankdir = "LR" if transmat.shape[0] <= 4 else "TB"
    g = graphviz.Digraph("dynamics", graph_attr={"rankdir": rankdir, "fontname": "Helvetica", "label": dot_text(title), "labelloc": "t"})
    g.attr("node", shape="ellipse", style="filled", fontname="Helvetica", fontsize="11")
    g.attr("edge", fontname="Helvetica", fontsize="9")
    for s in range(transmat.shape[0]):
        g.node(f"s{s}", f"state {s}\n{int(dwell_total[s])} checkpoints\nstay p = {transmat[s, s]:.2f}", fillcolor=state_colour(s) + "80")
    for e in edges:
        # Feature names come from the trace (node names): plain, escaped text only.
        feats = [f"{name} {'↑' if grad > 0 else '↓'} ({grad:+.2f})" for name, grad in e.top]
        g.edge(f"s{e.source}", f"s{e.target}", label=dot_lines([f"p = {transmat[e.source, e.target]:.2f} (seen {e.count}×)", *feats]))
    return g


def render_png(graph: Any, *, dpi: int = 110) -> bytes:
    """Render the graph to PNG bytes with the ``dot`` program."""
    try:
        import graphviz
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("graphviz", "analyzers", "the state-transition graph") from None
    graph = graph.copy()
    graph.graph_attr["dpi"] = str(dpi)
    try:
        return graph.pipe(format="png", engine="dot")
    except graphviz.ExecutableNotFound:
        from tracefmt.errors import UsageError

        raise UsageError("the state-transition graph needs Graphviz's 'dot' program on PATH (e.g. apt-get install graphviz)") from None


def graph_figure(graph: Any) -> Figure:
    """The graph rendered by ``dot`` and shown in a matplotlib Figure."""
    import io

    from matplotlib.image import imread

    from ..figures import new_figure

    img = imread(io.BytesIO(render_png(graph)), format="png")
    h, w = img.shape[:2]
    fig, ax = new_figure(width=max(3.0, w / 110.0), height=max(2.0, h / 110.0))
    ax.imshow(img)
    ax.axis("off")
    return fig
