"""``model.compile``: ``torch.compile`` the model in place (``nn.Module.compile``: parameter names and checkpoints
unchanged), falling back to eager where it cannot compile. A model whose first compiled call fails in Dynamo or
Inductor (an operation they cannot trace or a backend that cannot build, say) is named in one warning and runs
eager from then on, rather than stopping the run. A failure that only shows when the backward graph is compiled,
at the first backward, still stops it with PyTorch's own message.

Uses ``nn.Module._compiled_call_impl``, the private attribute ``nn.Module.compile`` sets, in this one place.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

# what a compilation that cannot be done raises (Dynamo's errors, Inductor's build errors)
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError)


def compile_or_eager(model: nn.Module, name: str) -> None:
    """Compile ``model`` in place; if its first compiled call fails, warn naming ``name`` and run eager (see the
    module's docstring)."""
    model.compile()
    compiled = model._compiled_call_impl
    state = {"checked": False}

    def call(*args, **kwargs):
        if state["checked"]:
            return compiled(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except COMPILE_ERRORS as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            rank_zero_warn(f"model.compile: {name} could not be compiled ({type(error).__name__}: {first}); eager")
            model._compiled_call_impl = None  # nn.Module.__call__ runs the eager forward from now on
            return model._call_impl(*args, **kwargs)
        state["checked"] = True
        return out

    model._compiled_call_impl = call
