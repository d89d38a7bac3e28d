"""The exception tree and its wire codes."""

from __future__ import annotations

import pytest

from kvactors import errors

WIRE_CODES = {
    "bad_request", "too_large", "unavailable", "timeout", "overloaded", "forbidden", "internal",
}  # fmt: skip


def test_every_wire_code_has_exactly_one_class() -> None:
    assert set(errors.ERROR_CODES) == WIRE_CODES
    for code, cls in errors.ERROR_CODES.items():
        assert cls.code == code


def test_every_public_error_is_a_kvactors_error_with_a_known_code() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.KVActorsError)
            assert obj.code in WIRE_CODES


@pytest.mark.parametrize("code", sorted(WIRE_CODES))
def test_error_for_code_round_trips(code: str) -> None:
    error = errors.error_for_code(code, "why")
    assert error.code == code
    assert str(error) == "why"


def test_unknown_codes_become_internal_errors() -> None:
    assert type(errors.error_for_code("gremlins", "?")) is errors.InternalError


def test_builtin_bases_keep_idiomatic_except_clauses_working() -> None:
    assert issubclass(errors.BadRequestError, ValueError)
    assert issubclass(errors.RequestTimeoutError, TimeoutError)
