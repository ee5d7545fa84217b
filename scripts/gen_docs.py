"""Generate the settings and field reference tables and config examples of docs/configuration.md from the code.

Usage::

    .venv/bin/python scripts/gen_docs.py           # rewrite the generated sections in place
    .venv/bin/python scripts/gen_docs.py --check   # exit 1 and name stale sections

Each section lives between ``<!-- BEGIN GENERATED: <name> -->`` and
``<!-- END GENERATED: <name> -->``; everything outside the markers is hand-written and
left untouched. ``tests/test_docs.py`` runs the check so a field added without
regenerating the docs fails the suite.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from plugin.path_cel import CEL_LOGIN_FIELDS, CEL_ROLE_FIELDS  # noqa: E402
from plugin.path_config import CONFIG_FIELDS  # noqa: E402
from plugin.path_login import EXPLAIN_FIELDS, LOGIN_FIELDS  # noqa: E402
from plugin.path_role import ROLE_FIELDS  # noqa: E402
from plugin.schema import Field, FieldSet, FieldType  # noqa: E402
from plugin.token_fields import TOKEN_FIELDS  # noqa: E402
from server.identity.aliases import ALIAS_FIELDS  # noqa: E402
from server.identity.entities import LOOKUP_FIELDS  # noqa: E402
from server.identity.groups import GROUP_FIELDS  # noqa: E402
from server.identity.oidc import KEY_FIELDS as ID_KEY_FIELDS  # noqa: E402
from server.identity.oidc import ROLE_FIELDS as ID_ROLE_FIELDS  # noqa: E402
from server.mounts import TUNE_FIELDS  # noqa: E402
from server.settings import documented_settings  # noqa: E402

__all__ = [
    "SECTIONS", "render_table", "render_settings", "render_section", "replace_sections", "stale_sections", "main",
]

CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"

_TYPE_NAMES = {
    FieldType.STRING: "string",
    FieldType.LOWER_STRING: "string (lower-cased)",
    FieldType.NAME: "path segment",
    FieldType.BOOL: "bool",
    FieldType.INT: "int",
    FieldType.COMMA_STRING_SLICE: "string list",
    FieldType.DURATION: "duration",
    FieldType.SIGNED_DURATION: "duration (-1 allowed)",
    FieldType.MAP: "object",
    FieldType.KV_PAIRS: "string map",
    FieldType.SLICE: "JSON array",
}


def _cell(text: str) -> str:
    """Make ``text`` safe inside one Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _default(spec: Field) -> str:
    if spec.type is FieldType.NAME:
        return "—"
    if spec.default is None:
        return "`null`"
    if spec.default == "":
        return '`""`'
    return "`" + json.dumps(spec.default) + "`"


def _notes(spec: Field) -> str:
    notes: list[str] = []
    if spec.required:
        notes.append("required")
    if spec.alias_of is not None:
        notes.append(f"deprecated alias of `{spec.alias_of}`")
    elif spec.deprecated:
        notes.append("deprecated")
    if spec.sensitive:
        notes.append("secret: never returned or logged")
    if spec.type is FieldType.NAME:
        notes.append("taken from the URL path")
    return "; ".join(notes)


def render_table(fields: FieldSet | dict[str, Field], *, skip: set[str] | None = None) -> str:
    """A Markdown table of ``fields`` in declaration order: name, type, default, notes, description."""
    skip = skip or set()
    items = fields.items()
    lines = [
        "| Field | Type | Default | Notes | Description |",
        "|---|---|---|---|---|",
    ]
    for name, spec in items:
        if name in skip:
            continue
        lines.append(
            f"| `{name}` | {_TYPE_NAMES[spec.type]} | {_default(spec)} | {_cell(_notes(spec))} "
            f"| {_cell(spec.description)} |"
        )
    return "\n".join(lines)


def render_settings() -> str:
    """The server settings table, from the declarations in ``server/settings.py``."""
    lines = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    for key, spec, shown in documented_settings():
        lines.append(f"| `{key}` | {_cell(spec.kind)} | {_cell(shown)} | {_cell(spec.doc)} |")
    return "\n".join(lines)


def _role_only() -> str:
    return render_table(ROLE_FIELDS, skip=set(TOKEN_FIELDS))


def _example(name: str) -> Callable[[], str]:
    """A verbatim copy of ``configs/<name>.yaml`` in a fenced block."""

    def render() -> str:
        text = (ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8").rstrip("\n")
        return f"```yaml\n{text}\n```"

    return render


#: Section name → renderer. Every section must appear exactly once in its document.
SECTIONS: dict[str, Callable[[], str]] = {
    "config": lambda: render_table(CONFIG_FIELDS),
    "role": _role_only,
    "role-token": lambda: render_table(TOKEN_FIELDS),
    "login": lambda: render_table(LOGIN_FIELDS),
    "explain": lambda: render_table(EXPLAIN_FIELDS),
    "cel-role": lambda: render_table(CEL_ROLE_FIELDS),
    "cel-login": lambda: render_table(CEL_LOGIN_FIELDS),
    "identity-group": lambda: render_table(GROUP_FIELDS),
    "identity-group-alias": lambda: render_table(ALIAS_FIELDS),
    "identity-lookup": lambda: render_table(LOOKUP_FIELDS),
    "identity-token-key": lambda: render_table(ID_KEY_FIELDS),
    "identity-token-role": lambda: render_table(ID_ROLE_FIELDS),
    "settings": render_settings,
    "tune": lambda: render_table(TUNE_FIELDS),
    "example-dev": _example("dev"),
    "example-postgres": _example("postgres"),
    "example-seeded": _example("seeded"),
}

_NOTICE = "<!-- generated by scripts/gen_docs.py from the code; do not edit by hand -->"


def render_section(name: str) -> str:
    """The full text between the BEGIN and END markers of section ``name``."""
    return f"{_NOTICE}\n{SECTIONS[name]()}\n"


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {re.escape(name)} -->\n)(.*?)(<!-- END GENERATED: {re.escape(name)} -->)",
        re.S,
    )


def replace_sections(text: str, names: list[str] | None = None) -> tuple[str, list[str]]:
    """Return ``text`` with every section regenerated, and the names whose content changed.

    :raises ValueError: when a section's markers are missing or appear more than once.
    """
    changed: list[str] = []
    for name in names or list(SECTIONS):
        pattern = _pattern(name)
        found = pattern.findall(text)
        if len(found) != 1:
            raise ValueError(f"section {name!r}: expected one BEGIN/END marker pair, found {len(found)}")
        fresh = render_section(name)
        if found[0][1] != fresh:
            changed.append(name)
        text = pattern.sub(lambda m: m.group(1) + fresh + m.group(3), text)  # noqa: B023 - used at once
    return text, changed


def stale_sections(path: Path = CONFIGURATION_DOC) -> list[str]:
    """Names of the generated sections of ``path`` that differ from the code."""
    _, changed = replace_sections(path.read_text(encoding="utf-8"))
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale sections (exit 1)")
    parser.add_argument("--doc", type=Path, default=CONFIGURATION_DOC, help="the document to update")
    args = parser.parse_args(argv)
    text = args.doc.read_text(encoding="utf-8")
    try:
        fresh, changed = replace_sections(text)
    except ValueError as exc:
        print(f"{args.doc}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(
                f"{args.doc}: generated sections out of date: {', '.join(changed)} "
                "(run .venv/bin/python scripts/gen_docs.py)",
                file=sys.stderr,
            )
            return 1
        return 0
    if changed:
        args.doc.write_text(fresh, encoding="utf-8")
        print(f"{args.doc}: regenerated {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
