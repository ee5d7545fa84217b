"""``server.http.tlsnames``: how a certificate's names are matched against the config's
``override_allowed_server_names`` (Go's ``crypto/x509`` rules), one table; the handshake
itself is tested against real TLS servers in test_fetcher.py."""

from __future__ import annotations

import ssl

import pytest
import trustme

from server.http.tlsnames import certificate_names, names_match, restrict_server_names

#: (the name allowed, the certificate's DNS names and IP addresses, valid for it)
TABLE: list[tuple[str, list[str], bool]] = [
    ("idp.internal", ["idp.internal"], True),
    ("IDP.Internal.", ["idp.internal"], True),  # case and a trailing dot do not count
    ("idp.internal", ["IDP.INTERNAL."], True),
    ("idp.internal", ["other.internal", "idp.internal"], True),
    ("idp.internal", ["idp.internal.example"], False),
    ("idp.corp.test", ["*.corp.test"], True),
    ("a.idp.corp.test", ["*.corp.test"], False),  # a wildcard is one label
    ("corp.test", ["*.corp.test"], False),
    (".corp.test", ["*.corp.test"], False),  # an empty label is no host
    ("x.com", ["*.com"], False),  # never a wildcard for a whole domain
    ("x.corp.test", ["a.corp.test"], False),  # only a "*" label is a wildcard
    ("a.x.test", ["a.*.test"], False),
    ("idp.corp.test", ["*"], False),
    ("", ["idp.internal"], False),
    ("10.9.9.9", ["10.9.9.9"], True),
    ("10.9.9.9", ["idp.internal", "10.9.9.8"], False),
    ("::1", ["0:0:0:0:0:0:0:1"], True),  # an IP is compared as an address, not as text
    ("2001:db8::1", ["2001:DB8:0:0:0:0:0:1\n"], False),  # unstripped: certificate_names strips what ssl appends
    ("10.9.9.9", ["idp.internal"], False),
]


@pytest.mark.parametrize(("name", "certified", "valid"), TABLE, ids=[f"{n or 'empty'} for {c}" for n, c, _ in TABLE])
def test_names_match(name: str, certified: list[str], valid: bool) -> None:
    assert names_match(name, certified) is valid


def test_certificate_names_are_its_dns_names_and_ip_addresses() -> None:
    cert = {"subject": ((("commonName", "not.this"),),),
            "subjectAltName": (("DNS", "idp.internal"), ("email", "a@b.c"), ("IP Address", "10.0.0.1\n"),
                               ("URI", "https://idp.internal"))}
    assert certificate_names(cert) == ["idp.internal", "10.0.0.1"]
    assert certificate_names({"subject": ((("commonName", "idp.internal"),),)}) == []  # never the common name


def _refusal(certified: list[str], allowed: tuple[str, ...]) -> str:
    """The refusal's text when a server's certificate is for ``certified`` (an in-memory handshake)."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*certified).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    restrict_server_names(client, allowed)
    assert client.check_hostname is False and client.verify_mode is ssl.CERT_REQUIRED
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    ours = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    theirs = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, into in ((ours, c_out, s_in), (theirs, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                return str(exc.args[0])
            into.write(out.read())
    return ""


def test_the_refusal_names_what_the_certificate_is_for() -> None:
    six = [f"n{i}.corp.test" for i in range(6)]
    assert _refusal(six, ("idp.internal", "10.1.1.1")) == (
        "certificate is for n0.corp.test, n1.corp.test, n2.corp.test, n3.corp.test, n4.corp.test, not for any of "
        "override_allowed_server_names (idp.internal, 10.1.1.1)")
    assert _refusal(["ops@corp.test"], ("idp.internal",)) == (
        "certificate is for no DNS name or IP address, not for any of override_allowed_server_names (idp.internal)")
    assert _refusal(["idp.internal"], ("idp.internal",)) == ""
