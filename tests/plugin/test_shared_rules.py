"""The rules login and the token store share (plugin.cidrutil, plugin.policyutil) at their
edges: entries that do not parse, the boundary of the IPv4-mapped range, zones, and the exact
Vault messages. The table over all three places that apply them is
tests/server/test_security_rules.py; these cases were found by mutation testing
(docs/mutation.md)."""

from __future__ import annotations

import pytest

from plugin.cidrutil import cidr_allows, narrow_cidrs, parse_cidrs
from plugin.errors import InvalidRequest
from plugin.policyutil import fold_case, refuse_root, sanitize_policies

#: (bound CIDRs as stored, peer address, allowed)
EDGES: list[tuple[list[str], str | None, bool]] = [
    (["not a cidr", "10.0.0.0/8"], "10.0.0.1", True),  # a bad entry never matches, the next still may
    (["10.0.0.0/99", "10.0.0.0/8"], "10.0.0.1", True),
    (["not a cidr"], "10.0.0.1", False),
    (["::ffff:0:0/96"], "192.0.2.1", True),  # the whole mapped range is all of IPv4
    (["::ffff:0:0/96"], "::ffff:192.0.2.1", True),
    (["::ffff:0:0/95"], "::fffe:0:1", True),  # wider than the mapped range: an IPv6 network
    (["::ffff:0:0/95"], "192.0.2.1", False),
    (["::ffff:0:0/95"], "::ffff:192.0.2.1", False),  # a mapped peer is its IPv4 address
    (["::ffff:10.0.0.0/104"], "10.255.255.255", True),
    (["::ffff:10.0.0.0/104"], "11.0.0.0", False),
    (["::ffff:10.0.0.1/128"], "10.0.0.1", True),
    (["::ffff:10.0.0.1/128"], "10.0.0.2", False),
    (["fe80::/10"], "fe80::1%", True),  # an empty zone is ignored too
    (["fe80::/10"], "fe80::1%eth0", True),
    ([" 10.0.0.0/8 "], " 10.0.0.1 ", True),
    (["10.0.0.0/8"], None, False),
    ([], "10.0.0.1", False),
]


@pytest.mark.parametrize(("cidrs", "peer", "allowed"), EDGES, ids=[f"{','.join(c)} from {p}" for c, p, _ in EDGES])
def test_cidr_edges(cidrs: list[str], peer: str | None, allowed: bool) -> None:
    assert cidr_allows(cidrs, peer) is allowed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fe80::1%eth0", 'error parsing address "fe80::1%eth0": an IPv6 zone is not allowed in a bound CIDR'),
        (" 10.0.0.0/99 ", 'error parsing address "10.0.0.0/99": '),
        ("10.0.0.0/8/8", 'error parsing address "10.0.0.0/8/8": '),
    ],
)
def test_cidr_messages(value: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_cidrs(["10.0.0.0/8", value])
    assert exc.value.messages[0].startswith(message)
    assert len(exc.value.messages) == 1


def test_whitespace_only_policies_are_dropped() -> None:
    assert sanitize_policies([" ", "\t", "", "a"]) == ["a"]
    assert sanitize_policies([" "], add_default=True) == ["default"]
    assert refuse_root([" ", "B"]) == ["b"]


@pytest.mark.parametrize(("text", "folded"), [
    ("Ops-Team", "ops-team"), ("\u0130STANBUL", "istanbul"), ("\u0130", "i"), ("A\u03a3", "a\u03c3"),
    ("\u03a3A\u03a3", "\u03c3a\u03c3"), ("\u00c9quipe", "\u00e9quipe"), ("\u212a", "k"), ("stra\u00dfe", "stra\u00dfe"),
    ("\u01c5", "\u01c6"),
], ids=["ascii", "dotted capital I", "alone", "final sigma", "sigmas", "accent", "kelvin sign", "sharp s", "titlecase"])
def test_names_fold_as_gos_to_lower(text: str, folded: str) -> None:
    """Names are one name here and in Vault: Go's ``strings.ToLower`` maps each character by
    itself, where Python's ``str.lower`` gives ``i̇`` for ``İ`` and ``ς`` for a final ``Σ``
    (OpenBao 2.7.2 stores the policy ``AΣ`` as ``aσ``)."""
    assert fold_case(text) == folded
    assert sanitize_policies([text, folded]) == [folded]


def test_root_refusal_message_is_vaults() -> None:
    with pytest.raises(InvalidRequest) as exc:
        refuse_root([" Root "])
    assert exc.value.messages == ["auth methods cannot create root tokens"]


#: (case, the creating token's CIDRs, the requested ones, the child's CIDRs; None: refused)
NARROW: list[tuple[str, list[str], list[str], list[str] | None]] = [
    ("no parent CIDRs", [], ["10.0.0.0/8"], ["10.0.0.0/8"]),
    ("nothing requested", ["10.0.0.0/8"], [], ["10.0.0.0/8"]),
    ("a subnet of the parent's", ["10.0.0.0/8"], ["10.1.0.0/16"], ["10.1.0.0/16"]),
    ("a supernet of the parent's", ["10.1.0.0/16"], ["10.0.0.0/8"], ["10.1.0.0/16"]),
    ("the parent's of another version first", ["2001:db8::/32", "10.0.0.0/8"], ["10.1.0.0/16"], ["10.1.0.0/16"]),
    ("the first parent that holds it wins", ["10.0.0.0/8", "10.1.2.0/24"], ["10.1.0.0/16"], ["10.1.0.0/16"]),
    ("each parent inside it", ["10.1.0.0/16", "10.2.0.0/16", "192.0.2.0/24"], ["10.0.0.0/8"],
     ["10.1.0.0/16", "10.2.0.0/16"]),
    ("no repeats", ["10.1.0.0/16"], ["10.0.0.0/8", "10.0.0.0/7"], ["10.1.0.0/16"]),
    ("disjoint", ["10.0.0.0/8"], ["192.0.2.0/24"], None),
    ("another version only", ["10.0.0.0/8"], ["2001:db8::/32"], None),
]


@pytest.mark.parametrize(("parent", "requested", "child"), [c[1:] for c in NARROW], ids=[c[0] for c in NARROW])
def test_narrow_cidrs(parent: list[str], requested: list[str], child: list[str] | None) -> None:
    if child is not None:
        assert narrow_cidrs(parent, requested) == child
        return
    with pytest.raises(InvalidRequest) as info:
        narrow_cidrs(parent, requested)
    assert info.value.messages == [
        f"bound_cidrs {requested} are outside the creating token's bound CIDRs {parent}"
    ]
