"""plugin.schema coercion/durations/FieldSet, and parity between field schemas and stored dataclasses."""

from __future__ import annotations

import dataclasses
import re
from contextlib import nullcontext
from typing import Any

import pytest

from plugin.backend import JWTAuthBackend
from plugin.errors import InvalidRequest
from plugin.path_config import CONFIG_FIELDS, JWTConfig
from plugin.path_role import ROLE_FIELDS, Role
from plugin.schema import Field, FieldSet, FieldType, coerce, format_duration, parse_duration
from plugin.token_fields import TOKEN_FIELDS, TokenParams

T = FieldType
BAD = pytest.raises(InvalidRequest, match="^Field validation failed: error converting input")

COERCE = [
    ("string", T.STRING, "a", nullcontext("a")),
    ("string-int", T.STRING, 42, nullcontext("42")),
    ("string-bool", T.STRING, True, nullcontext("1")),
    ("string-float", T.STRING, 1.5, nullcontext("1.5")),
    ("string-list", T.STRING, ["a"], BAD),
    ("lower", T.LOWER_STRING, "MyRole", nullcontext("myrole")),
    ("bool-true", T.BOOL, "true", nullcontext(True)),
    ("bool-zero", T.BOOL, "0", nullcontext(False)),
    ("bool-number", T.BOOL, 2, nullcontext(True)),
    ("bool-bad", T.BOOL, "maybe", BAD),
    # Go's strconv.ParseBool, as Vault decodes: these spellings only, no yes/no, no spaces
    ("bool-T", T.BOOL, "T", nullcontext(True)),
    ("bool-TRUE", T.BOOL, "TRUE", nullcontext(True)),
    ("bool-False", T.BOOL, "False", nullcontext(False)),
    ("bool-empty", T.BOOL, "", nullcontext(False)),
    ("bool-yes", T.BOOL, "yes", BAD),
    ("bool-no", T.BOOL, "no", BAD),
    ("bool-mixed-case", T.BOOL, "tRuE", BAD),
    ("bool-spaced", T.BOOL, " true", BAD),
    ("int", T.INT, "12", nullcontext(12)),
    ("int-float", T.INT, 3.0, nullcontext(3)),
    ("int-bad", T.INT, "1.5", BAD),
    ("int-bool", T.INT, True, BAD),
    ("int-64-bit-max", T.INT, 2**63 - 1, nullcontext(2**63 - 1)),
    ("int-64-bit-min", T.INT, -(2**63), nullcontext(-(2**63))),
    ("int-over-64-bits", T.INT, 2**63, BAD),  # storage could not encode it
    ("int-under-64-bits", T.INT, -(2**63) - 1, BAD),
    ("int-huge-float", T.INT, 1e308, BAD),
    ("css-string", T.COMMA_STRING_SLICE, " a, b ,c", nullcontext(["a", "b", "c"])),
    ("css-empty", T.COMMA_STRING_SLICE, "", nullcontext([])),
    ("css-empties-kept", T.COMMA_STRING_SLICE, "a,,b", nullcontext(["a", "", "b"])),
    ("css-list", T.COMMA_STRING_SLICE, [" x ", 5], nullcontext(["x", "5"])),
    ("duration-int", T.DURATION, 30, nullcontext(30)),
    ("duration-go", T.DURATION, "1h30m", nullcontext(5400)),
    ("duration-days", T.DURATION, "2d", nullcontext(172800)),
    ("duration-empty", T.DURATION, "", nullcontext(0)),
    ("duration-negative", T.DURATION, "-1", BAD),
    ("duration-hr", T.DURATION, "1hr", BAD),
    ("duration-whole-float", T.DURATION, 3600.0, nullcontext(3600)),
    ("duration-fraction", T.DURATION, 1.5, BAD),  # was cut to 1 s; OpenBao refuses it too
    ("duration-fraction-string", T.DURATION, "1.5", BAD),
    ("duration-fraction-unit", T.DURATION, "1.5s", nullcontext(1)),  # Go's duration in whole seconds, as Vault
    # Leniencies OpenBao does not have (vault-differences row 80): spaces trimmed, a whole float.
    ("duration-spaced", T.DURATION, " 1h ", nullcontext(3600)),
    ("int-exponent", T.INT, 1e1, nullcontext(10)),
    ("signed-negative", T.SIGNED_DURATION, "-1", nullcontext(-1)),
    ("signed-go", T.SIGNED_DURATION, "-5s", nullcontext(-5)),
    ("map", T.MAP, {"a": 1}, nullcontext({"a": 1})),
    ("map-json-string", T.MAP, '{"a": 1}', nullcontext({"a": 1})),
    ("map-list", T.MAP, [1], BAD),
    ("kv-object", T.KV_PAIRS, {"a": 1}, nullcontext({"a": "1"})),
    ("kv-list", T.KV_PAIRS, ["a=b", "c=d=e"], nullcontext({"a": "b", "c": "d=e"})),
    ("kv-bad", T.KV_PAIRS, ["x"], BAD),
    ("slice", T.SLICE, [{"a": 1}], nullcontext([{"a": 1}])),
    ("slice-empty-object", T.SLICE, {}, nullcontext([])),
    ("slice-object", T.SLICE, {"a": 1}, BAD),
]


@pytest.mark.parametrize(("ftype", "raw", "expect"), [c[1:] for c in COERCE], ids=[c[0] for c in COERCE])
def test_coerce(ftype: FieldType, raw: Any, expect: Any) -> None:
    with expect as want:
        assert coerce("f", Field(ftype, "d"), raw) == want


LONG_DURATIONS = ["9" * 400, "9" * 400 + "s", "-" + "9" * 400 + "s", "1" + "0" * 300 + "h", "9" * 5000,
                  "9" * 400 + "d", "9" * 63 + "h", "1." + "9" * 400 + "s", "9223372036854775807s",
                  # past what Go's time.Duration holds (about 292 years): Vault refuses it too
                  "9223372037", "9223372037s", "2562048h", "106752d", "300000000000"]


@pytest.mark.parametrize("raw", ["9223372036", "9223372036s", "2562047h", "106751d"])
def test_the_longest_duration_is_gos(raw: str) -> None:
    """A token may live 292 years at most, so its expiry always has a four-digit year."""
    assert coerce("ttl", Field(T.DURATION, "d"), raw) <= 9223372036


@pytest.mark.parametrize("ftype", [T.DURATION, T.SIGNED_DURATION])
@pytest.mark.parametrize("raw", LONG_DURATIONS, ids=lambda r: f"{len(r)} chars")
def test_long_digit_strings_are_a_400_never_an_overflow(ftype: FieldType, raw: str) -> None:
    """Hundreds of digits raised OverflowError (a 500) or leaked Python's int-size limit."""
    with pytest.raises(InvalidRequest, match="duration out of range"):
        coerce("token_ttl", Field(ftype, "d"), raw)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (5, "5s"), (65, "1m5s"), (90000, "25h0m0s"), (86400, "24h0m0s"), (-3, "-3s")]
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, signed=True) == seconds


def test_fieldset_parse_public_openapi() -> None:
    fs = FieldSet({
        "a": Field(T.STRING, "A", default="x"),
        "s": Field(T.STRING, "secret", default="", sensitive=True),
        "old": Field(T.INT, "legacy", default=0, alias_of="new"),
        "new": Field(T.INT, "new", default=0),
        "name": Field(T.NAME, "captured"),
    })
    values, unknown = fs.parse({"a": 1, "zz": 1, "bb": 2, "s": "t"})
    assert values == {"a": "1", "s": "t"} and unknown == ["bb", "zz"]
    assert fs.public({"s": "t"}) == {"a": "x", "new": 0}
    api = fs.openapi()
    assert api["s"]["x-sensitive"] is True and "name" not in api
    assert fs.defaults() == {"a": "x", "s": "", "new": 0, "name": None}


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@pytest.mark.parametrize(
    ("cls", "fields"),
    [(JWTConfig, CONFIG_FIELDS), (Role, ROLE_FIELDS), (TokenParams, FieldSet(dict(TOKEN_FIELDS)))],
    ids=["config", "role", "token-params"],
)
def test_dataclass_matches_schema(cls: type, fields: FieldSet) -> None:
    """Every stored attribute has exactly one Field, and the reverse (path captures excluded)."""
    declared = {n for n, f in fields.items() if f.type is not T.NAME}
    assert _names(cls) == declared
    for f in dataclasses.fields(cls):
        assert _default(f) == fields[f.name].default_value(), f.name


def test_sensitive_fields() -> None:
    sensitive = {n for n, f in CONFIG_FIELDS.items() if f.sensitive}
    assert sensitive == {"oidc_client_secret", "oidc_client_private_key", "client_tls_key", "jwt_validation_hmac_secrets"}
    assert not any(f.sensitive for _, f in ROLE_FIELDS.items())


def test_legacy_fields_are_aliases() -> None:
    aliases = {n: f.alias_of for n, f in ROLE_FIELDS.items() if f.alias_of}
    assert aliases == {"policies": "token_policies", "ttl": "token_ttl", "max_ttl": "token_max_ttl",
                       "period": "token_period", "num_uses": "token_num_uses", "bound_cidrs": "token_bound_cidrs"}
    assert all(ROLE_FIELDS[n].deprecated for n in aliases)


def test_backend_openapi() -> None:
    paths = JWTAuthBackend().openapi_paths("auth/jwt/")
    assert {"/auth/jwt/config", "/auth/jwt/role/{name}", "/auth/jwt/role/{name}/explain", "/auth/jwt/login"} <= set(paths)
    props = paths["/auth/jwt/config"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert props["oidc_client_secret"]["x-sensitive"] is True
    assert props["jwt_validation_hmac_secrets"]["x-sensitive"] is True
    role_props = paths["/auth/jwt/role/{name}"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "expiration_leeway" in role_props and role_props["ttl"]["deprecated"] is True
    assert "get" in paths["/auth/jwt/role"]


def _ttl_or_system(raw: Any) -> int:
    if raw == "system":
        return 0
    if isinstance(raw, list):
        raise InvalidRequest("ttl must not be a list")
    return parse_duration(raw)  # a ValueError gets the standard message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("system", nullcontext(0)),
        ("1h", nullcontext(3600)),
        (["1h"], pytest.raises(InvalidRequest, match="^ttl must not be a list$")),
        ("soon", pytest.raises(InvalidRequest, match='^Field validation failed: error converting input soon for field '
                                                     '"ttl": time: invalid duration "soon"$')),
    ],
    ids=["own meaning", "passes through", "own message", "standard message"],
)
def test_field_parse_replaces_the_type_coercion(raw: Any, expected: Any) -> None:
    spec = Field(FieldType.DURATION, "A TTL or 'system'.", default=0, parse=_ttl_or_system)
    with expected as value:
        assert FieldSet({"ttl": spec}).parse({"ttl": raw}) == ({"ttl": value}, [])
    assert spec.openapi()["pattern"].startswith("^([-+]?(")  # the type still names the wire type


@pytest.mark.parametrize(
    ("ftype", "expected"),
    [
        (FieldType.STRING, "expected a string, got null"),
        (FieldType.LOWER_STRING, "expected a string, got null"),
        (FieldType.BOOL, "cannot parse as a boolean"),
        (FieldType.INT, "cannot parse as an integer"),
        (FieldType.DURATION, "expected a duration, got null"),
        (FieldType.SIGNED_DURATION, "expected a duration, got null"),
        (FieldType.COMMA_STRING_SLICE, []),
        (FieldType.MAP, {}),
    ],
    ids=lambda v: v.value if isinstance(v, FieldType) else None,
)
def test_null_is_refused_for_scalars_and_empty_for_lists(ftype: FieldType, expected: Any) -> None:
    """docs/vault-differences.md row 46: Vault takes a JSON null as the type's zero value
    (``"token_num_uses": null`` is unlimited uses); authmount refuses it for a scalar, naming
    the JSON type, never Python's (a duration said ``unsupported type NoneType``)."""
    spec = Field(ftype, "A field.")
    if isinstance(expected, str):
        with pytest.raises(InvalidRequest) as raised:
            coerce("f", spec, None)
        assert str(raised.value) == f'Field validation failed: error converting input null for field "f": {expected}'
    else:
        assert coerce("f", spec, None) == expected


@pytest.mark.parametrize(
    ("raw", "shown"),
    [(True, "true"), (False, "false"), (None, "null"), (2**70, str(2**70)), (1.5, "1.5"), ("soon", "soon"),
     ([1, "a"], '[1, "a"]')],
)
def test_the_input_is_echoed_as_json(raw: Any, shown: str) -> None:
    """As the caller wrote it: a boolean was echoed as Python's ``True``."""
    with pytest.raises(InvalidRequest, match="^Field validation failed: error converting input (.*) for field") as raised:
        coerce("f", Field(FieldType.INT, "A number."), raw)
    assert str(raised.value).startswith(f'Field validation failed: error converting input {shown} for field "f": ')


@pytest.mark.parametrize(("ftype", "kind"), [(T.MAP, "object"), (T.SLICE, "array")])
@pytest.mark.parametrize("depth", [150, 5000])
def test_a_json_string_nested_too_deeply_is_a_400(ftype: FieldType, kind: str, depth: int) -> None:
    """A map or list field given as a JSON string: a deep one raised RecursionError (a 500)."""
    with pytest.raises(InvalidRequest) as exc:
        coerce("provider_config", Field(ftype, "d"), "[" * depth + "]" * depth)
    message = str(exc.value)
    assert message.endswith(f'for field "provider_config": expected a JSON {kind}')
    assert f"… ({2 * depth} characters)" in message and len(message) < 400  # the input is cut


@pytest.mark.parametrize(("text", "valid"), [
    ("0", True), ("90", True), ("1h30m", True), ("1.5h", True), ("2d", True), ("-3s", True), ("", True),
    ("PT1H", False), ("1 h", False), ("h", False),
])
def test_the_documented_duration_pattern_is_what_the_server_reads(text: str, valid: bool) -> None:
    """A duration is documented by a pattern, not JSON Schema's ISO 8601 ``duration`` format
    (a fuzzer sent ``PT1H``, which the server refuses)."""


    pattern = Field(T.DURATION, "d").openapi()["pattern"]
    assert bool(re.match(pattern, text)) is valid
    if valid:
        parse_duration(text, signed=True)
    else:
        with pytest.raises(ValueError):
            parse_duration(text, signed=True)
