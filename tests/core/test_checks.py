"""lib.core.checks: each rule accepts its boundary values, rejects the values beyond them, bools and inf/nan, and
names the parameter and the value in its message."""
import math

import numpy as np
import pytest
import torch

from lib.core.checks import (
    ParameterError,
    check_bool,
    check_choice,
    check_data,
    check_int,
    check_number,
    check_positive,
)


def test_check_int_boundaries_and_conversion():
    assert check_int("k", 1) == 1
    assert check_int("k", 5, minimum=2, maximum=5) == 5
    assert check_int("k", 2, minimum=2, maximum=5) == 2
    assert check_int("k", -7, minimum=None) == -7
    assert check_int("n_orders", 0, 0) == 0
    got = check_int("k", np.int64(3))
    assert got == 3 and type(got) is int
    with pytest.raises(ParameterError, match=r"^k=0 is not allowed: an integer in \[1, inf\]$"):
        check_int("k", 0)
    with pytest.raises(ParameterError, match=r"^k=6 is not allowed: an integer in \[2, 5\]$"):
        check_int("k", 6, minimum=2, maximum=5)
    with pytest.raises(ParameterError, match=r"^k=1 is not allowed: an integer in \[2, 5\]$"):
        check_int("k", 1, minimum=2, maximum=5)


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), 2.0, math.inf, -math.inf, math.nan, None, "abc",
                                 torch.tensor(3)])
def test_check_int_rejects_bools_floats_inf_nan_and_others(bad):
    with pytest.raises(ParameterError) as err:
        check_int("chunk_size", bad, minimum=None)
    assert str(err.value).startswith(f"chunk_size={bad!r} is not allowed: an integer")
    assert isinstance(err.value, ValueError)
    assert err.value.name == "chunk_size" and err.value.value is bad


def test_check_number_boundaries():
    assert check_number("x", 0.0, ge=0.0) == 0.0
    assert check_number("x", 1.0, ge=0.0, le=1.0) == 1.0
    assert check_number("x", 5e-324, gt=0.0) == 5e-324
    got = check_number("x", np.float32(0.5), le=0.5)
    assert got == 0.5 and type(got) is float
    assert check_number("x", 3) == 3.0 and type(check_number("x", 3)) is float
    assert check_number("x", -1e300) == -1e300                       # no bounds: any finite number
    with pytest.raises(ParameterError, match=r"^x=0.0 is not allowed: a finite number in \(0.0, inf\]$"):
        check_number("x", 0.0, gt=0.0)
    with pytest.raises(ParameterError, match=r"a finite number in \[0.0, 1.0\]"):
        check_number("x", float(np.nextafter(1.0, 2.0)), ge=0.0, le=1.0)
    with pytest.raises(ParameterError, match=r"^x=-1e-300 is not allowed: a finite number in \[0.0, inf\]$"):
        check_number("x", -1e-300, ge=0.0)
    with pytest.raises(ParameterError, match=r"\(-inf, 2.0\]"):
        check_number("x", 2.5, le=2.0)


@pytest.mark.parametrize("bad", [True, False, np.bool_(False), math.inf, -math.inf, math.nan, np.float64("nan"),
                                 None, [1.0]])
def test_check_number_rejects_bools_inf_nan_and_others(bad):
    with pytest.raises(ParameterError) as err:
        check_number("sigma", bad)
    assert str(err.value).startswith(f"sigma={bad!r} is not allowed: a finite number")
    assert err.value.name == "sigma"


def test_check_positive():
    assert check_positive("lr", 1e-3) == 1e-3
    assert check_positive("lr", 5e-324) == 5e-324
    for bad in (0, 0.0, -1e-3, math.inf, math.nan, True):
        with pytest.raises(ParameterError, match=r"^lr=.* is not allowed: a finite number in \(0.0, inf\]"):
            check_positive("lr", bad)


def test_number_given_as_text_gets_the_hint():
    with pytest.raises(ParameterError) as err:
        check_positive("lr", "1e-3")
    msg = str(err.value)
    assert msg.startswith("lr='1e-3' is not allowed: a finite number in (0.0, inf]")
    assert "read as the text '1e-3'" in msg and "write it as a number" in msg
    with pytest.raises(ParameterError, match="read as the text '10'"):
        check_int("epochs", "10")
    with pytest.raises(ParameterError) as err:
        check_number("lr", "fast")
    assert "read as the text" not in str(err.value)                  # not a number at all: no hint


def test_check_choice_and_check_bool():
    assert check_choice("estimator", "sobol", ("plain", "antithetic", "sobol")) == "sobol"
    assert check_choice("distribution", "ball", {"gaussian": 1, "ball": 2}) == "ball"
    with pytest.raises(ParameterError, match=r"^estimator='qmc' is not allowed: one of \['plain', 'sobol'\]$"):
        check_choice("estimator", "qmc", ["plain", "sobol"])
    assert check_bool("shortcut", True) is True
    assert check_bool("shortcut", np.bool_(False)) is False
    for bad in (1, 0, "true", None):
        with pytest.raises(ParameterError, match=rf"^shortcut={bad!r} is not allowed: true or false$"):
            check_bool("shortcut", bad)


def test_check_data():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    assert check_data(x, y) == 4
    assert check_data(x[:1], y[:1]) == 1
    with pytest.raises(ValueError, match="same length, got 4 and 3"):
        check_data(x, y[:3])
    with pytest.raises(ValueError, match="empty data"):
        check_data(x[:0], y[:0])
    with pytest.raises(ValueError, match="empty data"):
        check_data(torch.tensor(1.0), torch.tensor(1))
    with pytest.raises(ValueError, match="torch tensors"):
        check_data(x.numpy(), y)
