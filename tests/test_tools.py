"""The calculator against Python's exact arithmetic (fractions), and against hostile input."""

import random
import time
from fractions import Fraction

import pytest

from fastgpt.tools import MAX_EXPRESSION_CHARS, calculate, evaluate, format_number


def _random_expression(rng: random.Random, depth: int) -> tuple[str, Fraction]:
    """A random expression and its exact value (the reference is Fraction arithmetic, not the calculator)."""
    if depth == 0 or rng.random() < 0.3:
        v = rng.randint(0, 999)
        return str(v), Fraction(v)
    op = rng.choice("+-*/")
    (a, va), (b, vb) = _random_expression(rng, depth - 1), _random_expression(rng, depth - 1)
    if op == "/" and vb == 0:
        op = "+"
    value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else None}[op]
    return f"({a} {op} {b})", value


@pytest.mark.parametrize("seed", range(5))
def test_random_expressions_match_exact_arithmetic(seed):
    rng = random.Random(seed)
    for _ in range(40):
        text, exact = _random_expression(rng, depth=4)
        got = evaluate(text)
        if exact.denominator == 1:
            assert got == exact.numerator, text  # exact integers stay exact (no float rounding)
        else:
            assert got == pytest.approx(float(exact), rel=1e-12), text


@pytest.mark.parametrize(
    "expression, shown",
    [
        ("1+2", "3"),
        ("(12 + 7) * 3", "57"),
        ("7/2", "3.5"),
        ("6/3", "2"),  # an exact quotient is shown without ".0"
        ("0.1 + 0.2", "0.3"),  # no float noise
        ("2^10", "1024"),  # "^" is a power
        ("2**-2", "0.25"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("sqrt(144)", "12"),
        ("max(3, 9, 4) - min(3, 9, 4)", "6"),
        ("round(2.567, 2)", "2.57"),
        ("12 × 3 ÷ 4", "9"),
        ("2**200", str(2**200)),
    ],
)
def test_display(expression, shown):
    assert calculate(expression) == shown


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("1/0", "division by zero"),
        ("5 % 0", "modulo by zero"),
        ("(-8) ** 0.5", "fractional power"),
        ("sqrt(-1)", "negative"),
        ("9**9**9", "too large"),
        ("10**5000", "too large"),
        ("1e308 * 10", "finite"),
        ("1,000 + 1", "','"),
        ("x + 1", "unsupported"),
        ("", "empty"),
        ("1 +", "invalid syntax"),
    ],
)
def test_errors_are_returned_as_output(expression, reason):
    out = calculate(expression)
    assert out.startswith("error: ") and reason in out


@pytest.mark.parametrize(
    "hostile",
    [
        "__import__('os').system('touch /tmp/pwned_by_calculator')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "(lambda: 1)()",
        "[x for x in range(10**9)]",
        "'a' * 10**9",
        "eval('1+1')",
        "abs.__self__",
        "True + 1",
    ],
)
def test_hostile_input_is_refused_without_effects(hostile, tmp_path):
    out = calculate(hostile)
    assert out.startswith("error: ")


def test_size_and_time_are_bounded():
    assert "longer than" in calculate("1+" * MAX_EXPRESSION_CHARS + "1")
    assert "too complex" in calculate("-" * 200 + "1")
    start = time.perf_counter()
    for text in ("9**9**9**9", "(2**4000) * (2**4000) * (2**4000)", "99999**99999"):
        assert calculate(text).startswith("error: ")
    assert time.perf_counter() - start < 1.0


def test_format_number():
    assert format_number(10**20) == str(10**20)
    assert format_number(1e20) == "1e+20"
    assert format_number(2 / 3) == "0.666666666667"


# ------------------------------------------------------------------------------------------ registry
def test_run_tool_by_name_and_its_errors():
    from fastgpt.conversation import calculator_call, python_call, tool_call
    from fastgpt.tools import run_tool, tool_registry

    assert run_tool(calculator_call("6*7")) == "42"
    assert run_tool(python_call('"strawberry".count("r")')) == "3\n"
    only_calc = tool_registry("calculator")
    assert run_tool(python_call("1"), only_calc) == "error: unknown tool 'python' (available: calculator)"
    assert run_tool(tool_call("calculator", {"code": "1"}), only_calc).startswith("error: calculator: ")


def test_parse_tool_names():
    from fastgpt.tools import parse_tool_names

    assert parse_tool_names("python, calculator,python") == ("python", "calculator")
    assert parse_tool_names("none") == parse_tool_names("") == ()
    with pytest.raises(ValueError, match="--tools names an unknown tool 'search'"):
        parse_tool_names("python,search")


def test_python_tool_output_is_cut_for_the_model():
    from fastgpt.tools import MAX_TOOL_OUTPUT_CHARS, python_tool

    text = python_tool("print('x' * 10_000)")
    assert text.startswith("x" * MAX_TOOL_OUTPUT_CHARS)
    assert text.endswith(f"... ({10_001 - MAX_TOOL_OUTPUT_CHARS} more characters not shown)")
