"""``sys/tools/hash[/<algorithm>]`` and ``sys/tools/random[/<source>][/<bytes>]``: Vault's
general purpose tools (the default policy grants ``sys/tools/hash``; ``vault write
sys/tools/random/32``).

The fields, defaults, order of checks and texts are OpenBao 2.7.2's; an input that is not
base64 names the byte where Go's decoder stops (``go_b64decode``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.pathdoc import REPLACED_WARNING
from plugin.schema import Field, FieldSet, FieldType
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "go_b64decode", "MAX_RANDOM_BYTES"]

#: OpenBao's ``random.APIMaxBytes``.
MAX_RANDOM_BYTES = 128 * 1024
_SOURCES = ("", "platform", "seal", "all")
_HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha2-224": hashlib.sha224, "sha2-256": hashlib.sha256, "sha2-384": hashlib.sha384,
    "sha2-512": hashlib.sha512, "sha3-224": hashlib.sha3_224, "sha3-256": hashlib.sha3_256,
    "sha3-384": hashlib.sha3_384, "sha3-512": hashlib.sha3_512,
}
#: A byte neither of the base64 alphabet nor a line break.
_OTHER = re.compile(rb"[^A-Za-z0-9+/\r\n]")


class B64Error(ValueError):
    """Go's ``base64.CorruptInputError``: the offset of the first byte it cannot take."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"illegal base64 data at input byte {offset}")


def go_b64decode(text: str) -> bytes:
    """Go's ``base64.StdEncoding.DecodeString``: padded standard base64, line breaks skipped.

    Go reads 4-character quanta (``decodeQuantum``); where it stops depends only on the first
    byte that is neither of the alphabet nor a line break and on how many alphabet bytes came
    before it, so that is found with C-speed scans, whatever the input's length.

    :raises B64Error: where Go's decoder fails (the same offset).
    """
    src = text.encode("utf-8", "surrogateescape")
    n = len(src)
    found = _OTHER.search(src)
    end = found.start() if found is not None else n
    before = src[:end]
    j = (end - before.count(b"\n") - before.count(b"\r")) % 4  # characters of the last quantum
    if found is None:
        if j:
            raise B64Error(n - j)
        return _decode(src)
    if src[end] != 0x3D or j in (0, 1):  # not '=', or padding where none can be
        raise B64Error(end)
    si = end + 1
    if j == 2:  # "==" is expected: the first is consumed
        si = n - len(src[si:].lstrip(b"\r\n"))
        if si == n:
            raise B64Error(n)
        if src[si] != 0x3D:
            raise B64Error(si - 1)
        si += 1
    si = n - len(src[si:].lstrip(b"\r\n"))
    if si < n:
        raise B64Error(si)
    return _decode(src)


def _decode(src: bytes) -> bytes:
    return base64.b64decode(src.replace(b"\n", b"").replace(b"\r", b""))


def _atoi(text: str) -> int:
    """Go's ``strconv.Atoi``, with its texts.

    :raises InvalidRequest: ``error parsing url-set byte count: ...`` (OpenBao's).
    """
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise InvalidRequest(f'error parsing url-set byte count: strconv.Atoi: parsing "{text}": invalid syntax')
    value = int(text)
    if not -(1 << 63) <= value < 1 << 63:
        raise InvalidRequest(f'error parsing url-set byte count: strconv.Atoi: parsing "{text}": value out of range')
    return value


def paths(b: SysBackend) -> list[SysPath]:
    """The two tool paths (a token whose policy allows them: the default policy has hash)."""

    async def hash_(req: Request, values: dict[str, Any]) -> Response:
        algorithm = values.get("urlalgorithm") or values.get("algorithm", "sha2-256")
        fmt = values.get("format", "hex")
        try:
            data = go_b64decode(values.get("input", ""))
        except B64Error as exc:
            raise InvalidRequest(f"unable to decode input as base64: {exc}") from None
        if fmt not in ("hex", "base64"):
            raise InvalidRequest(f'unsupported encoding format {fmt}; must be "hex" or "base64"')
        if algorithm not in _HASHES:
            raise InvalidRequest(f"unsupported algorithm {algorithm}")
        digest = _HASHES[algorithm](data).digest()
        return Response(data={"sum": digest.hex() if fmt == "hex" else base64.b64encode(digest).decode()})

    async def random(req: Request, values: dict[str, Any]) -> Response:
        # OpenBao's parsing: the path's first part is the source, or the byte count when it
        # is not a source and no second part follows. A ``source`` in the body is replaced by
        # the path's, also when the path has none (OpenBao's warning says so).
        raw_source = values.get("urlsource", "")
        url_bytes = values.get("urlbytes", "")
        source = "platform"
        if raw_source == "":
            count = values.get("bytes", 32)
        elif url_bytes == "" and raw_source in _SOURCES:
            source, count = raw_source, values.get("bytes", 32)
        else:
            source = raw_source if url_bytes != "" else source
            count = _atoi(url_bytes if url_bytes != "" else raw_source)
        fmt = values.get("format", "base64")
        if count < 1:
            raise InvalidRequest("'bytes' cannot be less than 1")
        if count > MAX_RANDOM_BYTES:
            raise InvalidRequest(f"'bytes' should be less than {MAX_RANDOM_BYTES}")
        if fmt not in ("hex", "base64"):
            raise InvalidRequest(f'unsupported encoding format "{fmt}"; must be "hex" or "base64"')
        if source not in _SOURCES:
            raise InvalidRequest(f'unsupported entropy source "{source}"; must be "platform" or "seal", or "all"')
        out = os.urandom(count)
        reply = Response(data={"random_bytes": out.hex() if fmt == "hex" else base64.b64encode(out).decode()})
        if source == "seal":
            reply.add_warning("no seal/entropy augmentation available, using platform entropy source")
        if "source" in values:
            reply.add_warning(REPLACED_WARNING.format("source"))
        return reply

    hash_fields = FieldSet({
        "input": Field(FieldType.STRING, "The base64-encoded input data.", default=""),
        "algorithm": Field(FieldType.STRING, "sha2-224, sha2-256 (default), sha2-384, sha2-512, sha3-224, "
                           "sha3-256, sha3-384 or sha3-512.", default="sha2-256"),
        "urlalgorithm": Field(FieldType.NAME, "The algorithm, in the path."),
        "format": Field(FieldType.STRING, "hex (default) or base64.", default="hex"),
    })
    random_fields = FieldSet({
        "urlsource": Field(FieldType.NAME, "The source (platform, seal, all), or the byte count, in the path."),
        "urlbytes": Field(FieldType.NAME, "The number of bytes, in the path."),
        "bytes": Field(FieldType.INT, f"The number of bytes (1 to {MAX_RANDOM_BYTES}; default 32).", default=32),
        "format": Field(FieldType.STRING, "base64 (default) or hex.", default="base64"),
        "source": Field(FieldType.STRING, "Taken in the path only (as OpenBao, which replaces this with the "
                        "path's): platform (default), seal or all; authmount has one source, the platform's.",
                        default="platform"),
    })
    source = r"(?P<urlsource>\w[\w.-]*\w|\w)"  # Vault's GenericNameRegex
    hash_ops: dict[Operation, Any] = {Operation.UPDATE: hash_}
    random_ops: dict[Operation, Any] = {Operation.UPDATE: random}
    return [
        SysPath("tools/hash", hash_fields, hash_ops, "Hash data (base64 input) with SHA-2 or SHA-3."),
        SysPath("tools/hash/(?P<urlalgorithm>.+)", hash_fields, hash_ops, "Hash data with the algorithm in the path."),
        SysPath("tools/random", random_fields, random_ops, "Random bytes from the platform's source."),
        SysPath(f"tools/random/{source}/(?P<urlbytes>.+)", random_fields, random_ops,
                "Random bytes: the source and the count in the path."),
        SysPath(f"tools/random/{source}", random_fields, random_ops,
                "Random bytes: the source (or the count) in the path."),
        SysPath("tools/random/(?P<urlbytes>.+)", random_fields, random_ops,
                "Random bytes: a path part that is no source (OpenBao's parsing then takes 32 bytes)."),
    ]
