"""The search-expression parser: every form, Grid's count suffix, YAML configs, and errors that mark the position."""

from __future__ import annotations

import pytest

from fulmen.sweep.space import Param, SearchExpressionError, SearchSpace, is_expression, load_config, parse_expression


def test_every_form_parses():
    p = parse_expression("uniform(0, 0.5)", "dropout")
    assert (p.kind, p.low, p.high, p.count, p.finite) == ("uniform", 0.0, 0.5, None, False)
    p = parse_expression(" loguniform( 1e-5 , 1e-1 ) ")
    assert (p.kind, p.low, p.high) == ("loguniform", 1e-5, 1e-1)
    p = parse_expression("int(2, 10, 2)")
    assert (p.kind, p.low, p.high, p.step) == ("int", 2, 10, 2)
    assert p.grid_values(0) == [2, 4, 6, 8, 10]
    p = parse_expression("choice(relu, 'gelu', \"tanh\", 3, -1.5e2, true, null)")
    assert p.values == ("relu", "gelu", "tanh", 3, -150.0, True, None)
    p = parse_expression("[2, 4, 8]")
    assert (p.kind, p.values, p.finite) == ("list", (2, 4, 8), True)


def test_count_suffix_draws_the_same_values_for_a_seed_and_crosses():
    p = parse_expression("uniform(1e-6, 1e-1, 20)", "lr")
    a, b = p.grid_values(7), p.grid_values(7)
    assert a == b and len(a) == 20 and all(1e-6 <= v <= 1e-1 for v in a)
    assert p.grid_values(8) != a
    lg = parse_expression("loguniform(1e-6, 1e-1, 5)", "lr").grid_values(0)
    assert len(lg) == 5 and all(1e-6 <= v <= 1e-1 for v in lg)
    space = SearchSpace([p, parse_expression("[2, 4, 8, 16]", "layers")])
    assert space.all_finite() and space.grid_size(7) == 80  # Grid's example: 20 x 4 trials


def test_is_expression_only_for_calls_and_lists():
    assert is_expression("uniform(1, 2)") and is_expression("[1,2]") and is_expression(" choice(a)")
    assert not is_expression("0.1") and not is_expression("uniformity") and not is_expression("data/x.csv")


@pytest.mark.parametrize(
    ("text", "column", "problem"),
    [
        ("uniform(1e-6, abc)", 14, "a bound must be a number"),
        ("uniform(1, 2", 12, "expected ',' or ')'"),
        ("normal(0, 1)", 0, "unknown function 'normal'"),
        ("loguniform(0, 1)", 11, "loguniform needs 0 < low"),
        ("uniform(2, 1)", 8, "must be below high"),
        ("int(1, 2.5)", 7, "int() high must be an integer"),
        ("int(1, 5, 0)", 10, "the step must be positive"),
        ("uniform(1, 2, 0)", 14, "the count must be a positive integer"),
        ("[1, 2", 5, "expected ',' or ']'"),
        ("[]", 0, "an empty list"),
        ("choice()", 6, "choice() needs at least one value"),
        ("uniform(1, 2) x", 14, "unexpected 'x'"),
        ("choice('a, b)", 7, "unterminated string"),
        ("uniform(1)", 9, "needs two bounds"),
    ],
)
def test_bad_expressions_mark_the_position(text, column, problem):
    with pytest.raises(SearchExpressionError) as info:
        parse_expression(text, "lr")
    msg = str(info.value)
    assert problem in msg and "for lr" in msg and text in msg
    lines = msg.splitlines()
    caret_line = next(line for line in lines if line.strip() == "^")
    assert caret_line.index("^") - 2 == column, msg
    assert "Expected one of" in msg  # the fix


def test_continuous_parameter_cannot_be_gridded():
    p = parse_expression("uniform(0, 1)", "x")
    with pytest.raises(ValueError, match="cannot cross it"):
        p.grid_values(0)


def test_yaml_config(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "trials: 4\nparameters:\n  --lr: loguniform(1e-5, 1e-1)\n  --layers: [2, 4]\n"
        "  model:\n    hidden: choice(8, 16)\n    name: fixed\n"
    )
    cfg = load_config(str(path))
    space = SearchSpace.from_mapping(cfg["parameters"])
    assert space.names == ["--lr", "--layers", "model.hidden"]
    assert space.params[1] == Param("--layers", "list", values=(2, 4), text="[2, 4]")
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters:\n  lr: uniform(1, x)\n")
    with pytest.raises(SearchExpressionError, match="for lr"):
        SearchSpace.from_mapping(load_config(str(bad))["parameters"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(str(tmp_path / "list.yaml"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_a_parameter_swept_twice_is_an_error():
    space = SearchSpace()
    space.add(parse_expression("[1]", "a"))
    with pytest.raises(ValueError, match="swept twice"):
        space.add(parse_expression("[2]", "a"))
