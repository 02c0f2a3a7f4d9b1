"""Call a loaded ``torch.export`` program without the Python its module wraps around every call.

``ExportedProgram.module()`` returns a graph module that, on every call, runs two forward pre-hooks (one
re-checks the inputs' tree structure, building key paths), flattens the inputs and unflattens the outputs
with pytree, calls its shape guards under a dynamo config patch (there for retracing, which a worker never
does) and reads each parameter through a chain of ``Module.__getattr__``: for the MLP 784-1024-1024-10 at
batch 1, about 0.14 ms of CPU per call on top of the model's 0.2 ms. :func:`direct_call` builds, once, a
function that runs the same graph, guards included, on the inputs as a flat tuple of tensors, with the
parameters bound; the tree structure it no longer checks per call is checked here, once. A module of any
other shape is called as it is.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch.fx.graph import _PyTreeCodeGen
from torch.utils import _pytree as pytree

GUARDS = "_guards_fn"  # the submodule torch.export's unlifting adds: the input shape guards, called first


def direct_call(module: torch.nn.Module) -> Callable[..., Any] | None:
    """Return a function from positional tensors to ``module``'s outputs that skips its per-call wrapping, or
    None when ``module`` is not an unlifted exported program taking only positional inputs."""
    graph = getattr(module, "graph", None)
    codegen = getattr(graph, "_codegen", None)
    if not isinstance(module, torch.fx.GraphModule) or not isinstance(codegen, _PyTreeCodeGen):
        return None
    assert isinstance(graph, torch.fx.Graph)
    in_spec, out_spec = codegen.pytree_info.in_spec, codegen.pytree_info.out_spec
    placeholders = list(graph.find_nodes(op="placeholder"))
    guard_nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == GUARDS]
    # Without a guards submodule, module()'s pre-hook checks the input ranges itself: keep calling it.
    if len(guard_nodes) != 1 or not hasattr(module, GUARDS) or out_spec is None:
        return None
    if not _positional_leaves(in_spec, len(placeholders)):
        return None
    guard = _unpatched(getattr(module, GUARDS))
    if guard is None or guard_nodes[0].args != tuple(placeholders):
        return None
    # The same graph without its guards call (they run first, on the same inputs), generated without pytree,
    # the parameters and buffers it reads (each a chain of Module.__getattr__ per call) bound once instead.
    flat = torch.fx.Graph()
    outputs = flat.graph_copy(graph, {})
    flat.output(outputs)
    for node in flat.find_nodes(op="call_module", target=GUARDS):
        flat.erase_node(node)
    state: list[torch.Tensor] = []
    first = next(iter(flat.find_nodes(op="placeholder")), None)
    for node in list(flat.find_nodes(op="get_attr")):
        value = operator.attrgetter(str(node.target))(module)
        if isinstance(value, torch.Tensor) and first is not None:
            with flat.inserting_before(first):
                node.replace_all_uses_with(flat.placeholder(f"state_{len(state)}"))
            flat.erase_node(node)
            state.append(value)  # the module's own tensor: an in-place update (a buffer's) still lands there
    forward = functools.partial(torch.fx.GraphModule(module, flat).forward, *state)
    if out_spec.is_leaf():
        unpack: Callable[[Any], Any] = lambda flat_outputs: flat_outputs[0]  # noqa: E731
    elif out_spec.type in (tuple, list) and all(child.is_leaf() for child in out_spec.children()):
        unpack = list
    else:
        unpack = lambda flat_outputs: pytree.tree_unflatten(list(flat_outputs), out_spec)  # noqa: E731

    def call(*inputs: torch.Tensor) -> Any:
        guard(*inputs)
        return unpack(forward(*inputs))

    return call


def _positional_leaves(in_spec: pytree.TreeSpec | None, count: int) -> bool:
    """Whether ``in_spec`` is ``((leaf,) * count, {})``: positional inputs only, none nested, no keywords."""
    if in_spec is None or in_spec.type is not tuple or in_spec.num_children != 2:
        return False
    args, kwargs = in_spec.children()
    return (
        args.type in (tuple, list)
        and args.num_children == count
        and all(child.is_leaf() for child in args.children())
        and kwargs.type is dict
        and kwargs.num_children == 0
    )


def _unpatched(guards: torch.nn.Module) -> Callable[..., Any] | None:
    """The guards' own function, without the dynamo config patch around it (a few microseconds a call)."""
    forward = guards.forward
    try:
        inner = inspect.getclosurevars(forward).nonlocals.get("func")
    except (TypeError, ValueError):
        return None
    return inner if callable(inner) and getattr(inner, "__name__", "") == "_" else None


def positional_inputs(module: torch.nn.Module) -> tuple[str, ...] | None:
    """Return the names of an exported program's positional inputs, in order (those it was exported with by
    position, which its ``module()`` refuses by keyword whatever their names), or None for another module."""
    if not isinstance(module, torch.fx.GraphModule):
        return None
    codegen = getattr(module.graph, "_codegen", None)
    if not isinstance(codegen, _PyTreeCodeGen):
        return None
    in_spec, names = codegen.pytree_info.in_spec, list(codegen.pytree_info.orig_args)
    if in_spec is None or in_spec.type is not tuple or in_spec.num_children != 2:
        return None
    args = in_spec.children()[0]
    if args.type not in (tuple, list) or args.num_children > len(names):
        return None
    return tuple(names[: args.num_children])
