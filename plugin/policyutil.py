"""Policy lists on roles and tokens, written once (Vault ``sdk/helper/policyutil``): the one
normal form, and the rule that a login never yields root."""

from __future__ import annotations

from plugin.errors import InvalidRequest

__all__ = ["fold_case", "sanitize_policies", "refuse_root", "ROOT_REFUSED"]

ROOT_REFUSED = "auth methods cannot create root tokens"


def fold_case(text: str) -> str:
    """``text`` lower-cased as Go's ``strings.ToLower`` does it, so a name is one name here
    and in Vault: each character by its own simple mapping (``İ`` is ``i``, where Python's
    ``str.lower`` gives ``i̇``; a final ``Σ`` is ``σ``, where it gives ``ς``)."""
    if text.isascii():
        return text.lower()
    return "".join("i" if c == "\u0130" else c.lower() for c in text)


def sanitize_policies(policies: list[str], *, add_default: bool = False) -> list[str]:
    """Trim, lower-case, drop empties, de-duplicate and sort; with ``add_default`` add
    ``default`` unless ``root`` is present. Every spelling of root (`` Root ``, ``ROOT``)
    becomes ``root`` here, so the checks after it see one name."""
    out = {fold_case(p.strip()) for p in policies if p and p.strip()}
    if add_default and "root" not in out:
        out.add("default")
    return sorted(out)


def refuse_root(policies: list[str]) -> list[str]:
    """``sanitize_policies(policies)``, refusing root: what an auth method may grant (at
    login, on renewal, and again when the server issues the token).

    :raises InvalidRequest: ``auth methods cannot create root tokens`` (CVE-2025-5999).
    """
    out = sanitize_policies(policies)
    if "root" in out:
        raise InvalidRequest(ROOT_REFUSED)
    return out
