"""The precondition language and parameter checks: pure logic."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.commands.definitions import BadParams, _check_value
from agent.config import ParamSpec
from agent.expr import ExprError, Expression, parse, parse_arithmetic

V = {
    "Vehicle.Speed": 0.0,
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 19.5,
    "Vehicle.LowVoltageSystemState": "ON",
    "Vehicle.Cabin.HVAC.IsAirConditioningActive": True,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Vehicle.Speed == 0", True),
        ("Vehicle.Speed != 0", False),
        ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current >= 20", False),
        ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current > 19", True),
        ("Vehicle.LowVoltageSystemState == 'ON'", True),
        ('Vehicle.LowVoltageSystemState == "OFF"', False),
        ("Vehicle.Cabin.HVAC.IsAirConditioningActive == true", True),
        ("Vehicle.Cabin.HVAC.IsAirConditioningActive", True),
        ("not Vehicle.Cabin.HVAC.IsAirConditioningActive", False),
        (
            "Vehicle.Speed == 0 and (Vehicle.Speed > 5 or Vehicle.LowVoltageSystemState == 'ON')",
            True,
        ),
        ("Vehicle.Unknown.Path == 1", False),  # not known yet: false, never an error
        ("not Vehicle.Unknown.Path == 1", False),  # ... and negating it does not make it true
        ("not Vehicle.Unknown.Path", False),
        ("Vehicle.Unknown.Path or Vehicle.Speed == 0", True),  # or: one definite true is enough
        ("Vehicle.Cabin.HVAC.IsAirConditioningActive == 1", False),  # a boolean is not 1
        ("Vehicle.LowVoltageSystemState > 3", False),  # no ordering across types
        ("Vehicle.Speed == $limit", True),
        ("Vehicle.Speed < -1.5e1", False),
    ],
)
def test_evaluation(text: str, expected: bool) -> None:
    assert parse(text).evaluate(V, {"limit": 0}) is expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Vehicle.Speed ==",
        "== 1",
        "Speed == 0",
        "__import__('os').system('x')",
        "Vehicle.Speed == 0 and",
        "(Vehicle.Speed == 0",
        "Vehicle.Speed = 0",
        "1 + 1",
        "Vehicle.Speed == 0 or or",
    ],
)
def test_what_is_refused_at_load(text: str) -> None:
    with pytest.raises(ExprError):
        parse(text)


def test_paths_and_params_are_listed_for_config_checks() -> None:
    expression = parse("Vehicle.Speed < $max and Vehicle.Cabin.HVAC.IsAirConditioningActive")
    assert expression.paths == {"Vehicle.Speed", "Vehicle.Cabin.HVAC.IsAirConditioningActive"}
    assert expression.params == {"max"}
    assert "Vehicle.Speed=0.0" in expression.explain(V)
    # JSON terms, not Python's: what a back end reading the detail writes itself.
    shown = parse("Vehicle.Cabin.HVAC.IsAirConditioningActive and Vehicle.X == 'A'").explain(
        {"Vehicle.Cabin.HVAC.IsAirConditioningActive": False}
    )
    assert "IsAirConditioningActive=false" in shown and "Vehicle.X=unknown" in shown
    assert "False" not in shown


@pytest.mark.parametrize(
    ("spec", "value", "ok"),
    [
        (ParamSpec(type="number", min=16, max=28), 21.5, 21.5),
        (ParamSpec(type="number", min=16, max=28), 16, 16),
        (ParamSpec(type="number", min=16, max=28), 28.01, None),
        (ParamSpec(type="number"), math.nan, None),
        (ParamSpec(type="number"), math.inf, None),
        (ParamSpec(type="number"), True, None),
        (ParamSpec(type="number"), "21", None),
        (ParamSpec(type="integer", min=1, max=60), 15.0, 15),
        (ParamSpec(type="integer", min=1, max=60), 15.5, None),
        (ParamSpec(type="boolean"), 1, None),
        (ParamSpec(type="boolean"), False, False),
        (ParamSpec(type="string", choices=["eco", "max"]), "eco", "eco"),
        (ParamSpec(type="string", choices=["eco", "max"]), "turbo", None),
    ],
)
def test_parameter_values(spec: ParamSpec, value: object, ok: object) -> None:
    if ok is None:
        with pytest.raises(BadParams):
            _check_value("p", spec, value)
    else:
        result = _check_value("p", spec, value)
        assert result == ok and type(result) is type(ok)


_PATHS = ("Vehicle.A", "Vehicle.B", "Vehicle.C")
_LEAVES = st.sampled_from([*_PATHS, "0", "2", "0.5", "1e3", "1e200", "'x'", "true"])


def _arithmetic_text(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from("+-*/"), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        children.map(lambda c: f"-{c}"),
        st.tuples(
            st.sampled_from(["abs", "min", "max"]), st.lists(children, min_size=1, max_size=3)
        ).map(lambda t: f"{t[0]}({', '.join(t[1]) if t[0] != 'abs' else t[1][0]})"),
        st.tuples(children, children).map(lambda t: f"({t[0]} > {t[1]})"),
    )


@given(
    text=st.recursive(_LEAVES, _arithmetic_text, max_leaves=8),
    values=st.dictionaries(
        st.sampled_from(_PATHS),
        st.one_of(st.integers(-5, 5), st.floats(-10, 10), st.booleans(), st.just("ON"), st.none()),
    ),
)
@settings(max_examples=500, deadline=None)
def test_a_computed_value_is_the_same_compiled_or_walked(text: str, values: dict[str, Any]) -> None:
    """`compute:` expressions run as closures on the live path; the tree walk is the reference."""
    try:
        expression = parse_arithmetic(text)
    except ExprError:
        assume(False)  # no signal path in it, say
    walked = Expression(expression.text, expression.tree, expression.paths, expression.params)
    assert expression.arithmetic is not None and walked.arithmetic is None
    compiled, reference = expression.number(values), walked.number(values)
    assert compiled == reference and type(compiled) is type(reference), text


@pytest.mark.parametrize("text", ["min(Vehicle.A)", "max(Vehicle.A)", "abs(Vehicle.A, 1)"])
def test_a_function_with_the_wrong_number_of_arguments_is_refused_at_load(text: str) -> None:
    """min(x) would raise at every evaluation on the live path: refused when the config loads."""
    with pytest.raises(ExprError, match="argument"):
        parse_arithmetic(text)


def test_a_number_too_large_for_a_float_is_no_value() -> None:
    """`1e200` is read as an integer; squared and times an integer input it cannot become a
    float: no value, as for a division by zero, rather than an exception on the live path."""
    expression = parse_arithmetic("Vehicle.A * 1e200 * 1e200")
    walked = Expression(expression.text, expression.tree, expression.paths, expression.params)
    assert expression.number({"Vehicle.A": 3}) is None
    assert walked.number({"Vehicle.A": 3}) is None
    assert expression.number({"Vehicle.A": 3.0}) is None  # inf as a float: not finite
