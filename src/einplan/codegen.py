"""Stage 4: a plan's statements -> readable Python source.

One function, jaxtyping annotations on parameters and return, one line per
step with a comment naming the lowering and the step in pattern form.  Only
names the planner made (``x0``, ``t1`` ...) and allow-listed torch calls are
rendered; axis names appear only inside string literals (via ``repr``) and
comments, and they are grammar-checked identifiers.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

import torch

from . import ir

HEADER = "import torch\nfrom torch import Tensor\nfrom jaxtyping import Bool, Complex, Float, Int, Int64, Integer, Shaped\n"


def _const(value) -> str:
    if isinstance(value, torch.dtype):
        return str(value)  # "torch.float32"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return f"float({str(value)!r})"
        return repr(value)
    if isinstance(value, str):  # a Triton option ("ieee"), a reducer, a checked pattern: a literal, by repr
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(_const(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise TypeError(f"cannot render constant {value!r}")


def _index_item(item) -> str:
    if item is None:
        return "None"
    if item is ...:
        return "..."
    if isinstance(item, slice):
        return ":"
    if isinstance(item, int):
        return repr(int(item))
    if isinstance(item, ir.Range):
        start = "" if item.start == ir.Const(None) else expr(item.start)
        return f"{start}:{expr(item.stop)}"
    return expr(item)


def _args(args, kwargs) -> str:
    parts = [expr(a) for a in args]
    parts += [f"{k}={expr(v)}" for k, v in kwargs]
    return ", ".join(parts)


# Python's binding of the arithmetic operators: a product inside a sum needs no parentheses
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2, "@": 2}


def _binds_tighter(node, op: str) -> bool:
    """Whether ``node``, an operand of ``op``, is an arithmetic operation that binds tighter than it."""
    return isinstance(node, ir.BinOp) and _PRECEDENCE.get(node.op, 0) > _PRECEDENCE.get(op, 3)


def _atom(node) -> str:
    """Render ``node`` so that ``.method`` or ``[...]`` can follow it."""
    text = expr(node)
    return f"({text})" if isinstance(node, (ir.BinOp, ir.IfExp, ir.BoolOp)) else text


def expr(node) -> str:
    if isinstance(node, ir.Var):
        return node.name
    if isinstance(node, ir.Const):
        return _const(node.value)
    if isinstance(node, ir.Call):
        return f"{node.func}({_args(node.args, node.kwargs)})"
    if isinstance(node, ir.Method):
        return f"{_atom(node.obj)}.{node.name}({_args(node.args, node.kwargs)})"
    if isinstance(node, ir.Attr):
        return f"{_atom(node.obj)}.{node.name}"
    if isinstance(node, ir.Index):
        return f"{_atom(node.obj)}[{', '.join(_index_item(i) for i in node.items)}]"
    if isinstance(node, ir.BinOp):
        chained = isinstance(node.left, ir.BinOp) and node.left.op == node.op and node.op in "*+"
        left = expr(node.left) if chained or _binds_tighter(node.left, node.op) else _atom(node.left)
        right = expr(node.right) if _binds_tighter(node.right, node.op) else _atom(node.right)
        return f"{left} {node.op} {right}"
    if isinstance(node, ir.IfExp):
        return f"{_atom(node.then)} if {_atom(node.condition)} else {_atom(node.otherwise)}"
    if isinstance(node, ir.BoolOp):
        return f" {node.op} ".join(_atom(v) for v in node.values)
    if isinstance(node, ir.Tuple):
        inner = ", ".join(expr(v) for v in node.items)
        return f"({inner},)" if len(node.items) == 1 else f"({inner})"
    if isinstance(node, ir.Apply):
        return f"{node.function}.apply({_args(node.args, ())})"
    if isinstance(node, ir.Launch):
        return f"{node.kernel}[{expr(ir.Tuple(node.grid))}]({_args(node.args, node.kwargs)})"
    if isinstance(node, ir.Kept):
        return f"{node.helper}({_args((node.view, ir.Const(node.slot), *node.inputs), ())})"
    raise TypeError(f"cannot render {node!r}")


def _target(target) -> str:
    if isinstance(target, str):
        if not target.isidentifier():
            raise ValueError(f"not a generated name: {target!r}")
        return target
    return expr(target)


def statements(stmts, indent: str = "    ") -> list[str]:
    lines: list[str] = []
    for stmt in stmts:
        if isinstance(stmt, ir.Assign):
            line = f"{indent}{_target(stmt.target)} = {expr(stmt.value)}"
            lines.append(f"{line}  # {stmt.comment}" if stmt.comment else line)
        elif isinstance(stmt, ir.Do):
            line = f"{indent}{expr(stmt.value)}"
            lines.append(f"{line}  # {stmt.comment}" if stmt.comment else line)
        elif isinstance(stmt, ir.Loop):
            stop = repr(int(stmt.stop)) if isinstance(stmt.stop, int) else expr(stmt.stop)
            step = repr(int(stmt.step)) if isinstance(stmt.step, int) else expr(stmt.step)
            head = f"{indent}for {stmt.var} in range({int(stmt.start)}, {stop}, {step}):"
            lines.append(f"{head}  # {stmt.comment}" if stmt.comment else head)
            lines.extend(statements(stmt.body, indent + "    "))
        elif isinstance(stmt, ir.If):
            lines.append(f"{indent}if {expr(stmt.condition)}:")
            lines.extend(statements(stmt.body, indent + "    "))
        elif isinstance(stmt, ir.Delete):
            lines.append(f"{indent}del {', '.join(_target(n) for n in stmt.names)}")
        elif isinstance(stmt, ir.Save):
            lines.append(f"{indent}ctx.save_for_backward({', '.join(_target(n) for n in stmt.names)})")
        elif isinstance(stmt, ir.Saved):
            targets = ", ".join(_target(n) for n in stmt.names) + ("," if len(stmt.names) == 1 else "")
            lines.append(f"{indent}{targets} = ctx.saved_tensors")
        elif isinstance(stmt, ir.Return):
            value = stmt.value
            if isinstance(value, tuple):
                lines.append(f"{indent}return " + ", ".join(expr(v) for v in value))
            else:
                lines.append(f"{indent}return {expr(value)}")
        else:  # pragma: no cover
            raise TypeError(f"cannot render statement {stmt!r}")
    return lines


def qualified(nodes, prefix: str):
    """``nodes`` with every autograd function's local name prefixed by ``prefix`` (the name of the
    generated function that defines it)."""
    if isinstance(nodes, ir.Apply):
        return ir.Apply(f"{prefix}_{nodes.function}", qualified(nodes.args, prefix))
    if isinstance(nodes, ir.Launch):
        return replace(nodes, kernel=f"{prefix}_{nodes.kernel}")
    if isinstance(nodes, ir.Kept):
        view, inputs = qualified(nodes.view, prefix), qualified(nodes.inputs, prefix)
        return replace(nodes, view=view, inputs=inputs, helper=f"{prefix}_{nodes.helper}")
    if isinstance(nodes, ir.Kernel):
        name = f"{prefix}_{nodes.name}"
        return ir.Kernel(name, nodes.source.replace(f"def {nodes.name}(", f"def {name}(", 1))
    if isinstance(nodes, ir.Function):
        forward, backward = qualified(nodes.forward, prefix), qualified(nodes.backward, prefix)
        return replace(nodes, name=f"{prefix}_{nodes.name}", forward=forward, backward=backward)
    if isinstance(nodes, tuple | list):
        return type(nodes)(qualified(n, prefix) for n in nodes)
    if is_dataclass(nodes) and not isinstance(nodes, (type, ir.Const)):
        return replace(nodes, **{f.name: qualified(getattr(nodes, f.name), prefix) for f in fields(nodes)})
    return nodes


def definition(node: ir.Function | ir.Kernel) -> str:
    """The source of one module-level definition a plan makes: an autograd function's class, or a
    Triton kernel (einplan's template, as it is)."""
    return node.source if isinstance(node, ir.Kernel) else autograd_class(node)


def autograd_class(function: ir.Function) -> str:
    """The source of one ``torch.autograd.Function``: a forward and a backward, each a staticmethod."""
    lines = [f"class {_target(function.name)}(torch.autograd.Function):", f'    """{function.doc}"""', ""]
    lines += ["    @staticmethod", f"    def forward(ctx, {', '.join(_target(n) for n in function.inputs)}):"]
    lines += statements(function.forward, "        ")
    lines += ["", "    @staticmethod", f"    def backward(ctx, {', '.join(_target(n) for n in function.grads)}):"]
    lines += statements(function.backward, "        ")
    return "\n".join(lines) + "\n"


# The pool of kept buffers (``ir.Kept``): a module-level ``threading.local`` its functions share.
KEPT_POOL = "einplan_buffers"
KEPT_POOL_SOURCE = f"{KEPT_POOL} = threading.local()  # each thread's buffers kept between calls\n"


def kept_source(name: str) -> str:
    """The helper an ``ir.Kept`` calls, named ``name``: einplan's fixed text."""
    return f'''def {name}(view, slot, *inputs):
    """``view.contiguous()``, written into this thread's buffer for ``slot``, which is kept
    between calls: a copy of a few MB allocated anew on every call can have its pages faulted
    in anew on every call.  A fresh copy while autograd records ``view`` or ``inputs`` (it may
    save the copy) and under torch.compile."""
    recording = torch.is_grad_enabled() and (view.requires_grad or any(x.requires_grad for x in inputs))
    if recording or torch.compiler.is_compiling():
        return view.contiguous()
    key, size = (slot, view.dtype, view.device), view.numel()
    flat = vars({KEPT_POOL}).get(key)
    if flat is None or flat.numel() < size:
        with torch.inference_mode(False):  # a buffer made in inference mode could not be written after it
            flat = vars({KEPT_POOL})[key] = torch.empty(size, dtype=view.dtype, device=view.device)
    return flat[:size].view(view.shape).copy_(view)
'''


def function(name: str, params: list[tuple[str, str]], returns: str, doc: str, body, functions=()) -> str:
    """The source of one function: ``def name(x0: Float[Tensor, "..."], ...) -> ...``, after the
    autograd functions (``ir.Function``) its body applies and the helper its kept buffers use."""
    if not name.isidentifier():
        raise ValueError(f"not a function name: {name!r}")
    kept = any(isinstance(node, ir.Kept) for node in ir.walk((body, functions)))  # it writes a kept buffer
    classes = kept_source(f"{name}_kept") + "\n\n" if kept else ""
    classes += "".join(definition(f) + "\n\n" for f in qualified(tuple(functions), name))
    if functions or kept:  # only a body that applies autograd functions or keeps buffers names them
        body = qualified(tuple(body), name)
    lines = [f"def {name}("]
    lines += [f"    {p}: {a}," for p, a in params]
    lines.append(f") -> {returns}:")
    lines.append(f'    """{doc}"""')
    lines += statements(body)
    return classes + "\n".join(lines) + "\n"
