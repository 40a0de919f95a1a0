"""PyTorch adapter: trace a model's training or evaluation through module hooks.

>>> with TorchTracer(model, "run.trace", optimizer=opt) as tracer:  # doctest: +SKIP
...     for x, y in loader:
...         loss = loss_fn(model(x), y)
...         loss.backward()
...         opt.step()  # the tracer counts steps through the optimizer's hooks
...         tracer.log_scalar("loss", loss)
...         opt.zero_grad()

See docs/torch.md for the options and what is recorded.
"""

from tracefmt.histogram import DEFAULT_BINNING, FASTAI_BINNING, Binning

from .forward import trace_forward
from .tracer import TorchTracer

__all__ = ["TorchTracer", "trace_forward", "Binning", "DEFAULT_BINNING", "FASTAI_BINNING"]
