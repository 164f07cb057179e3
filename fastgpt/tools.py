"""The tools a model can call: the calculator (here) and sandboxed Python (:func:`run_python`, from
:mod:`fastgpt.sandbox`), and the registry that runs a call by its tool's name.

A *tool* is a callable that takes the call's arguments as keyword arguments and returns the text the
model is shown (it never raises for what a model wrote: errors are text too). :data:`TOOLS` holds the
built-in ones, ``calculator(expression=...)`` and ``python(code=...)``; :func:`run_tool` runs an
OpenAI-style call (:func:`fastgpt.conversation.tool_call`) against a registry and turns every failure
(an unknown tool, missing arguments) into an ``error: ...`` line the model sees.

A model that has learned to call the calculator writes an expression such as ``(12 + 7) * 3`` between
its tool-call tokens; the engine evaluates it here and feeds the result back as tool-output tokens.
The expression comes from a model (or, through the server, from a user), so it is untrusted:

- it is parsed with :mod:`ast` and only number literals, ``+ - * / // % **`` (``^`` is read as
  ``**``), unary signs, parentheses and a few named functions are evaluated; there is no ``eval`` or
  ``exec``, no names, attributes, strings or calls outside the whitelist;
- size is bounded before any work (expression length, number of syntax nodes) and during it (integer
  results are capped in bits *before* a power or product is computed, so ``9**9**9`` is refused rather
  than computed), and a deadline stops anything that still runs long;
- :func:`calculate` never raises: an error becomes the tool's output (``"error: division by zero"``),
  which is what the model sees, as a person would see it on a calculator's display.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastgpt.errors import UserError
from fastgpt.sandbox import ToolResult, run_python

__all__ = [
    "TOOLS",
    "CalculatorError",
    "ToolResult",
    "calculate",
    "evaluate",
    "format_number",
    "parse_tool_names",
    "python_tool",
    "run_python",
    "run_tool",
    "tool_registry",
]

MAX_EXPRESSION_CHARS = 256
MAX_SYNTAX_NODES = 128
MAX_INT_BITS = 4096  # about 1233 decimal digits
TIME_LIMIT_S = 0.05

Number = int | float


class CalculatorError(UserError):
    """An expression the calculator refuses or cannot evaluate; the message is shown to the model."""


def _checked_float(x: float) -> float:
    if math.isnan(x) or math.isinf(x):
        raise CalculatorError("result is not a finite number")
    return x


def _int_bits(x: Number) -> int:
    return abs(x).bit_length() if isinstance(x, int) else 0


def _mul(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and _int_bits(a) + _int_bits(b) > MAX_INT_BITS:
        raise CalculatorError("result too large")
    return a * b


def _div(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("division by zero")
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b  # exact integer quotient: keep it an int so big values stay exact
    return a / b


def _floordiv(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("division by zero")
    return a // b


def _mod(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("modulo by zero")
    return a % b


def _pow(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and b >= 0:
        # |a|**b has about b * log2|a| bits: refuse before computing it
        if abs(a) > 1 and b * math.log2(abs(a)) > MAX_INT_BITS:
            raise CalculatorError("result too large")
        return a**b
    if a == 0 and b < 0:
        raise CalculatorError("division by zero")
    if a < 0 and not float(b).is_integer():
        raise CalculatorError("fractional power of a negative number")
    try:
        return _checked_float(float(a) ** float(b))
    except OverflowError:
        raise CalculatorError("result too large") from None


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculatorError("square root of a negative number")
    if isinstance(x, int):
        root = math.isqrt(x)
        if root * root == x:
            return root
    return math.sqrt(x)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is not None and not isinstance(ndigits, int):
        raise CalculatorError("round() takes a whole number of digits")
    return round(x) if ndigits is None else round(x, ndigits)


_BINARY: dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: _div,
    ast.FloorDiv: _floordiv,
    ast.Mod: _mod,
    ast.Pow: _pow,
    ast.BitXor: _pow,  # "^" is written for powers far more often than for xor
}
_UNARY: dict[type, Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    # name: (function, min args, max args)
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 8),
    "max": (max, 1, 8),
    "sqrt": (_sqrt, 1, 1),
}


class _Evaluator:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def visit(self, node: ast.AST) -> Number:
        if time.perf_counter() > self.deadline:
            raise CalculatorError("took too long")
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise CalculatorError(f"not a number: {node.value!r}")
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.visit(node.left), self.visit(node.right)
            result = _BINARY[type(node.op)](left, right)
            return _checked_float(result) if isinstance(result, float) else result
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.visit(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = node.func.id
            if name not in _FUNCTIONS:
                raise CalculatorError(f"unknown function {name!r}")
            fn, lo, hi = _FUNCTIONS[name]
            if not lo <= len(node.args) <= hi:
                raise CalculatorError(f"{name}() takes {lo}..{hi} arguments, got {len(node.args)}")
            return fn(*(self.visit(a) for a in node.args))
        if isinstance(node, ast.Tuple):
            raise CalculatorError("unexpected ',' (write numbers without thousands separators)")
        raise CalculatorError(f"unsupported syntax: {type(node).__name__}")


def evaluate(expression: str, *, time_limit_s: float = TIME_LIMIT_S) -> Number:
    """The value of an arithmetic expression; raises :class:`CalculatorError` for anything else."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    text = expression.strip().replace("×", "*").replace("÷", "/")
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise CalculatorError("invalid syntax") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_SYNTAX_NODES:
        raise CalculatorError("expression too complex")
    try:
        return _Evaluator(time.perf_counter() + time_limit_s).visit(tree)
    except (OverflowError, ValueError, TypeError) as e:
        if isinstance(e, CalculatorError):
            raise
        raise CalculatorError(str(e) or type(e).__name__) from None


def format_number(x: Number) -> str:
    """How a result is shown: integers exactly, floats to 12 significant digits without float noise
    (``0.1 + 0.2`` shows ``0.3``), whole floats without ``.0``."""
    if isinstance(x, int):
        return str(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.12g}"


def calculate(expression: str) -> str:
    """The calculator's display for ``expression``: the formatted value, or ``"error: <why>"``."""
    try:
        return format_number(evaluate(expression))
    except CalculatorError as e:
        return f"error: {e}"
    except RecursionError:
        return "error: expression too complex"


# --------------------------------------------------------------------------------------------- registry
MAX_TOOL_OUTPUT_CHARS = 2000  # what a model is shown of a Python cell's output (it costs context)
PYTHON_TIMEOUT_S = 5.0


def python_tool(code: str) -> str:
    """The Python tool as a model sees it: :func:`run_python`'s output and error line
    (:meth:`ToolResult.render`), cut to :data:`MAX_TOOL_OUTPUT_CHARS` characters (the first part and
    a note saying how much was left out), because every character is forced into the model's context."""
    text = run_python(code, timeout_s=PYTHON_TIMEOUT_S).render()
    if len(text) > MAX_TOOL_OUTPUT_CHARS:
        cut = len(text) - MAX_TOOL_OUTPUT_CHARS
        text = f"{text[:MAX_TOOL_OUTPUT_CHARS]}\n... ({cut} more characters not shown)"
    return text


Tool = Callable[..., str]
TOOLS: dict[str, Tool] = {"calculator": calculate, "python": python_tool}


def parse_tool_names(spec: str | Iterable[str], *, flag: str = "--tools") -> tuple[str, ...]:
    """``"python,calculator"`` (or a list of names) -> the names, each a built-in tool; ``""`` and
    ``"none"`` -> no tools. A name that is not built in is a one-line error naming ``flag``."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n and n != "none"]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise UserError(
            f"{flag} names an unknown tool {unknown[0]!r}; expected a comma-separated list of "
            f"{', '.join(TOOLS)} "
            "(or 'none')"
        )
    return tuple(dict.fromkeys(names))


def tool_registry(names: str | Iterable[str]) -> dict[str, Tool]:
    """The built-in tools named by ``names`` (see :func:`parse_tool_names`)."""
    return {n: TOOLS[n] for n in parse_tool_names(names)}


def run_tool(call: Mapping[str, Any], registry: Mapping[str, Tool] | None = None) -> str:
    """The text a model is shown for ``call`` (``{"function": {"name", "arguments"}}``) run against
    ``registry`` (default: all built-in tools). Never raises for what the call says: an unknown tool
    or arguments the tool does not take come back as ``error: ...``."""
    registry = TOOLS if registry is None else registry
    fn = call.get("function", {})
    name, args = fn.get("name"), fn.get("arguments", {})
    if name not in registry:
        return f"error: unknown tool {name!r} (available: {', '.join(registry) or 'none'})"
    if not isinstance(args, Mapping):
        return f"error: {name} takes an object of arguments"
    try:
        return str(registry[name](**args))
    except TypeError as e:  # missing or unexpected arguments
        return f"error: {name}: {e}"
