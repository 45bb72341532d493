"""A TorchScript compilation state as a fresh process has it, for the steps that compile.

A persistent worker keeps torch imported from step to step, and with it the process-wide
TorchScript compilation unit. Every class TorchScript compiles (scripting, tracing, or loading
a ``.ts`` in ``verify``) is registered there, and a second class with the same qualified name
(a ``Conv2d`` with other constants, the same model traced after it was scripted) is renamed
``___torch_mangle_N`` with ``N`` from a counter that only grows. Those names are written into the
saved module's code and pickle, so the same step gave different bytes depending on what its
worker ran before (measured on the default recipe's ResNet-18: ``ts_trace`` after ``ts_script``
differed from ``ts_trace`` alone). torch's own test suite resets this state between tests the
same way; a new compilation unit also restarts the mangling counter, which clearing the old one
does not.

The other process-wide source, Python's per-process string hash seed (TorchScript writes a
module's ``__constants__`` set in iteration order), is fixed by the engine for every worker
(``PYTHONHASHSEED``; see ``engine/execution/pool.py``).
"""

from __future__ import annotations


def reset_torchscript_state() -> None:
    """Give TorchScript a new, empty compilation unit and forget the types compiled so far.

    Modules compiled earlier keep working: each holds a reference to the unit it was compiled
    into."""
    import torch
    import torch.jit._recursive as recursive
    import torch.jit._state as state
    import torch.jit._trace as trace

    unit = torch._C.CompilationUnit()
    for module in (state, recursive, trace):  # each imported the name `_python_cu`
        if hasattr(module, "_python_cu"):
            module._python_cu = unit
    recursive.concrete_type_store = recursive.ConcreteTypeStore()
    state._clear_class_state()
