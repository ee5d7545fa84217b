"""The user documentation matches the code: generated tables, settings keys, error messages."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from plugin.path_cel import CEL_LOGIN_FIELDS, CEL_ROLE_FIELDS
from plugin.path_config import CONFIG_FIELDS
from plugin.path_role import ROLE_FIELDS
from plugin.schema import FieldSet
from server import settings as settings_mod
from server.identity.aliases import ALIAS_FIELDS
from server.identity.entities import LOOKUP_FIELDS
from server.identity.groups import GROUP_FIELDS
from server.identity.oidc import KEY_FIELDS as ID_KEY_FIELDS
from server.identity.oidc import ROLE_FIELDS as ID_ROLE_FIELDS
from server.mounts import TUNE_FIELDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load_gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# Generated sections


def test_generated_sections_are_up_to_date() -> None:
    stale = gen_docs.stale_sections(DOCS / "configuration.md")
    assert stale == [], f"run .venv/bin/python scripts/gen_docs.py (stale: {stale})"


def test_check_mode_exit_codes(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(_read("configuration.md"), encoding="utf-8")
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 0
    # Drop one row of the config table: check mode must notice, regeneration must fix it.
    text = doc.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `bound_issuer` |"))
    doc.write_text(text.replace(row + "\n", ""), encoding="utf-8")
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 1
    assert gen_docs.main(["--doc", str(doc)]) == 0
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 0
    assert row in doc.read_text(encoding="utf-8")


def test_missing_markers_are_an_error(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text("# nothing generated here\n", encoding="utf-8")
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 2
    with pytest.raises(ValueError, match="section 'config'"):
        gen_docs.replace_sections("no markers")


def test_hand_written_text_outside_markers_is_kept() -> None:
    text = _read("configuration.md")
    fresh, _ = gen_docs.replace_sections(text)
    outside = re.sub(r"<!-- BEGIN GENERATED: ([\w-]+) -->.*?<!-- END GENERATED: \1 -->", "", fresh, flags=re.S)
    assert "## 2. Mount config" in outside
    assert "### Key sources" in outside


@pytest.mark.parametrize(
    ("fields", "section"),
    [
        (CONFIG_FIELDS, "config"), (ROLE_FIELDS, "role"), (TUNE_FIELDS, "tune"), (CEL_ROLE_FIELDS, "cel-role"),
        (CEL_LOGIN_FIELDS, "cel-login"), (GROUP_FIELDS, "identity-group"), (ALIAS_FIELDS, "identity-group-alias"),
        (LOOKUP_FIELDS, "identity-lookup"), (ID_KEY_FIELDS, "identity-token-key"),
        (ID_ROLE_FIELDS, "identity-token-role"),
    ],
    ids=["config", "role", "tune", "cel-role", "cel-login", "identity-group", "identity-group-alias", "identity-lookup",
         "identity-token-key", "identity-token-role"],
)
def test_every_field_has_a_row(fields: FieldSet, section: str) -> None:
    text = _read("configuration.md")
    for name in fields:
        assert re.search(rf"^\| `{re.escape(name)}` \|", text, re.M), f"{section} field {name} has no row"


def test_secret_fields_are_marked() -> None:
    table = gen_docs.render_table(CONFIG_FIELDS)
    for name in ("oidc_client_secret", "jwt_validation_hmac_secrets"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert "secret: never returned" in row


def test_cells_escape_pipes() -> None:
    from plugin.schema import Field, FieldSet, FieldType

    table = gen_docs.render_table(FieldSet({"x": Field(FieldType.STRING, "a | b\nc", default="")}))
    assert r"a \| b c" in table


# ---------------------------------------------------------------------------
# Server settings


_SETTINGS = list(settings_mod.documented_settings())


@pytest.mark.parametrize("key", [key for key, _, _ in _SETTINGS])
def test_every_settings_key_is_documented(key: str) -> None:
    assert re.search(rf"^\| `{re.escape(key)}` \|", _read("configuration.md"), re.M), key


#: The required keys of one item of each list section (``mounts[]``, ``audit[]``).
_LIST_ITEMS: dict[str, dict[str, object]] = {"mounts[]": {"path": "jwt", "type": "jwt"},
                                             "audit[]": {"path": "file", "type": "file"}}


def _nest(key: str, value: object) -> dict[str, object]:
    """``storage.path: x`` as the YAML mapping ``{storage: {path: x}}``; ``mounts[].path`` (and
    ``audit[].path``) in an item that has the required keys."""
    head, dot, rest = key.partition(".")
    if head in _LIST_ITEMS:
        return {head[:-2]: [_LIST_ITEMS[head] | ({rest: value} if rest else {})]}
    return {head: _nest(rest, value)} if dot else {head: value}


def _get(settings: object, key: str) -> object:
    for part in key.split("."):
        value = getattr(settings, part[:-2] if part in _LIST_ITEMS else part)
        settings = value[0] if part in _LIST_ITEMS else value
    return settings


@pytest.mark.parametrize(("key", "spec", "shown"), _SETTINGS, ids=[key for key, _, _ in _SETTINGS])
def test_every_documented_setting_loads_with_its_documented_default(key: str, spec: settings_mod.Setting,
                                                                   shown: str) -> None:
    """The loader accepts every key the table shows, and the default the table shows is the
    one it uses (the declaration is the loader's: a documented key cannot be refused again)."""
    if spec.section is not None or not shown.startswith("`"):
        return  # sections, required keys and ``none``: the example configs load them
    text = shown.strip("`")
    value = text if spec.kind == "duration" else yaml.safe_load(text)
    head = key.partition(".")[0]
    base = _nest(head, None) if head in _LIST_ITEMS else {}
    loaded = settings_mod.settings_from_mapping(_nest(key, value))
    assert _get(loaded, key) == _get(settings_mod.settings_from_mapping(base), key)


def test_storage_engine_options_reach_the_engine() -> None:
    """Regression (issue 16): ``storage.sqlite_cache_entries`` was documented by the engine and
    refused by the loader."""
    sqlite = settings_mod.settings_from_mapping({"storage": {"sqlite_cache_entries": 0}}).storage
    assert sqlite.as_mapping()["sqlite_cache_entries"] == 0
    with pytest.raises(settings_mod.SettingsError, match=r"^storage\.sqlite_cache_entries: must be an integer >= 0$"):
        settings_mod.settings_from_mapping({"storage": {"sqlite_cache_entries": -1}})
    engine_doc = (ROOT / "server" / "storage" / "__init__.py").read_text(encoding="utf-8")
    for key, spec, _ in _SETTINGS:
        if spec.engine:
            assert f"``{key.removeprefix('storage.')}``" in engine_doc, key  # the engine reads it


@pytest.mark.parametrize("name", ["dev", "postgres", "seeded"])
def test_example_configs_are_valid_settings(name: str) -> None:
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))
    settings = settings_mod.settings_from_mapping(raw)
    assert settings.storage.type in ("sqlite", "postgres")


# ---------------------------------------------------------------------------
# Error messages: every message the code can send is in docs/troubleshooting.md
#
# The AST walk collects the message argument of every error constructor call and turns
# it into literal fragments with holes for the formatted values ({name} in an f-string,
# a variable, a call). Module-level string constants and class-level string attributes
# (``self.failure``) are resolved, so ``_SIG_PREFIX + "token missing kid ..."`` is checked
# in full. A message matches when its fragments appear, in order, on one line of the doc.

#: Modules whose messages a login (JWT or OIDC), a token use or a request decode can produce.
LOGIN_MODULES = (
    "plugin/path_login.py",
    "plugin/policy_templates.py",
    "plugin/path_cel.py",
    "plugin/cel.py",
    "plugin/claims.py",
    "plugin/jose_verify.py",
    "plugin/keys.py",
    "plugin/token_fields.py",
    "plugin/path_oidc.py",
    "plugin/oidc_flow.py",
    "plugin/oidc_login.py",
    "plugin/oidc_poll.py",
    "plugin/claim_sources.py",
    "plugin/backend.py",
    "plugin/cidrutil.py",
    "plugin/policyutil.py",
    "server/tokens/store.py",
    "server/tokens/entry.py",
    "server/tokens/ttl.py",
    "server/http/handlers.py",
    "server/http/errors.py",
    "server/http/fetcher.py",
)
#: Modules whose messages answer a config or role write.
CONFIG_MODULES = (
    "plugin/path_config.py", "plugin/path_role.py", "plugin/schema.py", "plugin/client_auth.py",
    # identity/ writes and lookups
    "server/identity/store.py", "server/identity/groups.py", "server/identity/aliases.py",
    "server/identity/entities.py", "server/identity/oidc.py", "server/identity/token_template.py",
    "server/identity/provider.py",
)

_CONSTRUCTORS = {
    "InvalidRequest", "PermissionDenied", "UpstreamError", "UnsupportedOperation", "NotFound",
    "RateLimited", "UnsupportedPath",
    "_fail", "fail",  # local wrappers that add a prefix ("error validating token: ", ...)
}
#: ValueError reasons that surface inside a message (``error parsing public key: <reason>``,
#: ``error checking jwks URL <url>: <reason>``); elsewhere ValueErrors stay internal.
_VALUE_ERROR_SCOPES: dict[str, set[str] | None] = {
    "plugin/keys.py": None,  # every function
    "plugin/jose_verify.py": {
        "_keys_for_public_key", "_load_pem",  # error parsing public key: <reason>
        "_reject_duplicates", "_reject_constant", "_finite_float",  # token <part> is not valid JSON: <reason>
    },
    "plugin/schema.py": None,  # Field validation failed: ...: <reason>
    "plugin/claim_sources.py": None,  # error resolving distributed claims: <reason>
    "plugin/client_auth.py": None,  # invalid oidc_client_private_key: <reason>
    "server/identity/token_template.py": {"_value"},  # error parsing template: <reason>
}

#: (module, fragment) pairs deliberately left out of the troubleshooting doc, with why.
EXCLUDED: dict[tuple[str, str], str] = {
    ("plugin/schema.py", "unknown field type "): "unreachable: every FieldType is handled (pragma: no cover)",
}

_Part = str | None  # None is a hole (a formatted value)


def _string_env(tree: ast.Module) -> dict[str, list[ast.expr]]:
    """Module-level names (key ``name``) and class attributes (key ``self.name``) bound to values."""
    env: dict[str, list[ast.expr]] = {}
    scopes: list[tuple[str, list[ast.stmt]]] = [("", tree.body)]
    scopes += [("self.", node.body) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    for prefix, body in scopes:
        for stmt in body:
            targets: list[ast.expr] = []
            value = None
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            for target in targets:
                if isinstance(target, ast.Name) and value is not None:
                    env.setdefault(prefix + target.id, []).append(value)
    return env


def _alternatives(expr: ast.expr, env: dict[str, list[ast.expr]], depth: int = 0) -> list[list[_Part]]:
    """Every message shape ``expr`` can build, as lists of literals and holes."""
    if depth > 6:
        return [[None]]
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [[expr.value]]
    if isinstance(expr, ast.JoinedStr):
        alts: list[list[_Part]] = [[]]
        for value in expr.values:
            if isinstance(value, ast.Constant):
                sub: list[list[_Part]] = [[str(value.value)]]
            elif isinstance(value, ast.FormattedValue):
                sub = _alternatives(value.value, env, depth + 1)
            else:
                sub = [[None]]
            alts = [a + s for a in alts for s in sub]
        return alts
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left = _alternatives(expr.left, env, depth + 1)
        right = _alternatives(expr.right, env, depth + 1)
        return [a + b for a in left for b in right]
    name = None
    if isinstance(expr, ast.Name):
        name = expr.id
    elif isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        name = "self." + expr.attr
    if name is not None and name in env:
        values = [v for v in env[name] if isinstance(v, (ast.Constant, ast.JoinedStr, ast.BinOp, ast.Name))]
        if values:
            return [alt for v in values for alt in _alternatives(v, env, depth + 1)]
    return [[None]]


def _function_of(tree: ast.Module) -> dict[int, str]:
    """Line number → name of the innermost enclosing function."""
    best: dict[int, tuple[int, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                line = getattr(child, "lineno", None)
                if line is not None and (line not in best or node.lineno > best[line][0]):
                    best[line] = (node.lineno, node.name)
    return {line: name for line, (_, name) in best.items()}


def extract_messages(module: str, source: str | None = None) -> list[tuple[int, list[_Part]]]:
    """(line, message shape) for every error message literal in ``module`` (or ``source``)."""
    tree = ast.parse(source if source is not None else (ROOT / module).read_text(encoding="utf-8"))
    env = _string_env(tree)
    functions = _function_of(tree)
    found: list[tuple[int, list[_Part]]] = []

    def add(line: int, expr: ast.expr) -> None:
        for alt in _alternatives(expr, env):
            found.append((line, alt))

    value_error_scope = _VALUE_ERROR_SCOPES.get(module, set())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if fname in _CONSTRUCTORS and node.args:
                add(node.lineno, node.args[0])
            elif fname == "ValueError" and node.args and module in _VALUE_ERROR_SCOPES:
                if value_error_scope is None or functions.get(node.lineno) in value_error_scope:
                    add(node.lineno, node.args[0])
            elif fname == "error_response" and len(node.args) >= 2 and isinstance(node.args[1], ast.List):
                for element in node.args[1].elts:
                    add(node.lineno, element)
            elif fname == "error_page" and len(node.args) >= 3:  # the OIDC callback's error pages
                add(node.lineno, node.args[2])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.endswith("_error"):
            # Helpers named *_error that return the message text (the claim checks now raise instead).
            for child in ast.walk(node):
                if isinstance(child, ast.Return) and child.value is not None:
                    add(child.lineno, child.value)
    return found


def _fragments(shape: list[_Part]) -> list[str]:
    """The literal runs of ``shape`` with whitespace collapsed, holes dropped."""
    out: list[str] = []
    current = ""
    for part in shape:
        if part is None:
            if current.strip():
                out.append(current)
            current = ""
        else:
            current += part
    if current.strip():
        out.append(current)
    return [re.sub(r"\s+", " ", f) for f in out]


def _shown(shape: list[_Part]) -> str:
    return "".join("<…>" if p is None else p for p in shape)


def _cases(modules: tuple[str, ...]) -> list[tuple[str, int, list[str], str]]:
    seen: set[tuple[str, tuple[str, ...]]] = set()
    cases = []
    for module in modules:
        for line, shape in extract_messages(module):
            frags = _fragments(shape)
            if sum(len(f.strip()) for f in frags) < 4:
                continue  # nothing but holes and punctuation
            key = (module, tuple(frags))
            if key in seen:
                continue
            seen.add(key)
            joined = "".join(frags)
            if (module, joined) in EXCLUDED:
                continue
            cases.append((module, line, frags, _shown(shape)))
    return cases


def _doc_lines(name: str) -> list[str]:
    # Markdown escapes a pipe inside a table cell as \|; compare the plain text.
    return [re.sub(r"\s+", " ", line.replace("\\|", "|")) for line in _read(name).splitlines()]


def _documented(frags: list[str], lines: list[str]) -> bool:
    pattern = re.compile(".*?".join(re.escape(f) for f in frags))
    return any(pattern.search(line) for line in lines)


_LOGIN_CASES = _cases(LOGIN_MODULES)
_CONFIG_CASES = _cases(CONFIG_MODULES)


def test_extractor_finds_messages() -> None:
    # Guards the AST walk itself: a refactor that hid messages from it would pass vacuously.
    shown = {c[3] for c in _LOGIN_CASES}
    assert len(_LOGIN_CASES) > 100
    assert "error validating token: error verifying token signature: token missing kid header parameter" in shown
    assert "Vault login failed. Expired or missing OAuth state." in shown
    assert "error validating claims: claim <…> is <…>" in shown
    assert len(_CONFIG_CASES) > 25


@pytest.mark.parametrize(
    ("module", "line", "frags", "shown"),
    _LOGIN_CASES,
    ids=[f"{c[0].split('/')[-1]}:{c[1]}" for c in _LOGIN_CASES],
)
def test_login_error_is_documented(module: str, line: int, frags: list[str], shown: str) -> None:
    assert _documented(frags, _doc_lines("troubleshooting.md")), (
        f"{module}:{line}: message not in docs/troubleshooting.md: {shown!r}"
    )


@pytest.mark.parametrize(
    ("module", "line", "frags", "shown"),
    _CONFIG_CASES,
    ids=[f"{c[0].split('/')[-1]}:{c[1]}" for c in _CONFIG_CASES],
)
def test_config_error_is_documented(module: str, line: int, frags: list[str], shown: str) -> None:
    assert _documented(frags, _doc_lines("troubleshooting.md")), (
        f"{module}:{line}: message not in docs/troubleshooting.md: {shown!r}"
    )


def test_a_new_undocumented_message_is_caught() -> None:
    source = (
        '_PREFIX = "error validating token: "\n'
        "class S:\n"
        '    failure = "brand new failure"\n'
        "    def f(self, kid):\n"
        '        raise InvalidRequest(_PREFIX + f"kid {kid} is " + self.failure)\n'
    )
    [(line, shape)] = extract_messages("plugin/new.py", source)
    assert line == 5
    assert shape == ["error validating token: ", "kid ", None, " is ", "brand new failure"]
    frags = _fragments(shape)
    assert not _documented(frags, _doc_lines("troubleshooting.md"))
    assert _documented(frags, ["| `error validating token: kid <kid> is brand new failure` | 400 |"])


def test_exclusions_are_still_needed() -> None:
    # An exclusion whose message no longer exists in the code is stale: delete it.
    present = {
        (module, "".join(_fragments(shape)))
        for module in LOGIN_MODULES + CONFIG_MODULES
        for _, shape in extract_messages(module)
    }
    for key in EXCLUDED:
        assert key in present, f"stale exclusion {key}"


# ---------------------------------------------------------------------------
# docs/api.md lists every route the server serves


def _api_paths() -> list[str]:
    """Every documented-path form of the server's routes, mount paths and token paths."""
    from server.sys.backend import SysBackend

    out = ["sys/" + spec.pattern for spec in SysBackend(core=None).paths]  # type: ignore[arg-type]
    from server.tokens.backend import TokenBackend

    for spec in TokenBackend(None).paths:  # type: ignore[arg-type]
        out.append("auth/token/" + spec.pattern)
    from plugin.backend import JWTAuthBackend

    for spec in JWTAuthBackend("jwt").paths:
        out.append("auth/<mount>/" + spec.pattern)
    from server.identity.backend import IdentityBackend

    for spec in IdentityBackend(lambda: None, lambda a, n: "", lambda: None, lambda: "").paths:  # type: ignore[arg-type, return-value]
        out.append("identity/" + spec.pattern)
    return sorted(set(out))


def _doc_form(pattern: str) -> str:
    text = re.sub(r"\(\?P<(\w+)>(?:[^()]|\((?:[^()])*\))*\)", r"<\1>", pattern)
    return text.replace("\\.", ".").removesuffix("/*").removesuffix("/?").removesuffix("?")


@pytest.mark.parametrize("path", _api_paths())
def test_api_path_is_documented(path: str) -> None:
    doc = _read("api.md")
    form = _doc_form(path)
    short = form.removeprefix("auth/token/")
    # The endpoint table names token paths in full or as siblings ("`create-orphan`").
    assert f"`{form}`" in doc or (form.startswith("auth/token/") and f"`{short}`" in doc), form


# ---------------------------------------------------------------------------
# docs/vault-differences.md: every row names test files that exist


def _difference_rows() -> list[tuple[str, list[str]]]:
    rows = []
    for line in _read("vault-differences.md").splitlines():
        match = re.match(r"\| (\d+) \|", line)
        if match:
            rows.append((match.group(1), re.findall(r"`(tests/[\w/]+\.py)`", line)))
    return rows


@pytest.mark.parametrize(("row", "files"), _difference_rows(), ids=[r for r, _ in _difference_rows()])
def test_difference_row_names_existing_tests(row: str, files: list[str]) -> None:
    assert files, f"row {row} names no test file"
    for name in files:
        assert (ROOT / name).is_file(), f"row {row}: {name} does not exist"
