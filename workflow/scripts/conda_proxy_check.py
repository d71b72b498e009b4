"""Conda proxy, part 2 (see conda_proxy.py): which env and which `python -m mmfusion`
command each rule runs, the third-party modules those commands reach (static: the AST of
the package), and `check`, which holds them against the mapping."""

from __future__ import annotations

import ast
import collections
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conda_proxy_specs import (
    DEFAULT_MAPPING,
    PACKAGE,
    REPO,
    EnvMap,
    load_mapping,
)

# ---------------------------------------------------------------------------------------
# Rules: which env and which `python -m mmfusion` command each one runs.

@dataclass
class Rule:
    """One `python -m mmfusion` command of a workflow rule and the env it runs in."""
    name: str
    env: str           # env file stem
    command: str       # e.g. 'train fold'
    module: str        # mmfusion.commands.<cmd>


_RULE_HEADER = re.compile(r"^[ \t]*(?:rule|checkpoint)[ \t]+(\w+)[ \t]*:", re.M)
_CONDA = re.compile(r"^[ \t]*conda:[ \t]*\n[ \t]*[\"']([^\"']+)[\"']", re.M)
_COMMAND = re.compile(r"python -m mmfusion\s+([a-z][a-z0-9_-]*)(?:\s+([a-z][a-z0-9_-]*))?")


def workflow_rules() -> tuple[list[Rule], list[str]]:
    """Every rule's env and mmfusion commands, read from workflow/rules/*.smk; (rules, problems)."""
    rules, problems = [], []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        heads = list(_RULE_HEADER.finditer(text))
        for i, head in enumerate(heads):
            block = text[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            conda, commands = _CONDA.search(block), _COMMAND.findall(block)
            name = head.group(1)
            if not commands:
                if conda:
                    problems.append(f"rule {name} ({smk.name}) has a conda env but runs no "
                                    "`python -m mmfusion` command: the checker cannot follow it")
                continue
            if not conda:
                problems.append(f"rule {name} ({smk.name}) runs mmfusion but has no conda env")
                continue
            env = Path(conda.group(1)).stem
            for cmd, sub in commands:
                module_file = REPO / PACKAGE / "commands" / f"{cmd}.py"
                if not module_file.is_file():
                    problems.append(f"rule {name}: no module {module_file} for command {cmd}")
                    continue
                rules.append(Rule(name, env, f"{cmd} {sub}".strip(),
                                  f"{PACKAGE}.commands.{cmd}"))
    return rules, problems


# ---------------------------------------------------------------------------------------
# Static imports: the AST of the package modules a command reaches.

@dataclass
class ModuleImports:
    """What one package module imports, at import time and anywhere."""
    top_level: set[str] = field(default_factory=set)   # executed on import of the module
    anywhere: set[str] = field(default_factory=set)    # + inside functions


def _module_file(name: str) -> Path | None:
    """The source file of a package module, or None when it is no module of this checkout."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an `if` test is TYPE_CHECKING (its body never runs)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


_CACHE: dict[str, ModuleImports] = {}


def module_imports(name: str) -> ModuleImports:
    """Absolute names a module imports (package submodules resolved to their files)."""
    if name in _CACHE:
        return _CACHE[name]
    path = _module_file(name)
    result = ModuleImports()
    _CACHE[name] = result
    if path is None:
        return result
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        """Absolute module names an import statement names."""
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            parts = name.split(".")
            base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        out = [mod]
        for alias in node.names:  # `from pkg import submodule`
            sub = f"{mod}.{alias.name}"
            if mod.split(".")[0] == PACKAGE and _module_file(sub):
                out.append(sub)
        return out

    def visit(node: ast.AST, in_function: bool) -> None:
        """Records the imports under `node`, noting whether they sit inside a function."""
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the TYPE_CHECKING body never runs
                visit(child, in_function)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in targets(node):
                result.anywhere.add(target)
                if not in_function:
                    result.top_level.add(target)
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef |
                                          ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    # cli imports every command module by name (importlib): that is a top-level import
    if name == f"{PACKAGE}.cli":
        for p in sorted((REPO / PACKAGE / "commands").glob("*.py")):
            if not p.stem.startswith("_"):
                for bucket in (result.top_level, result.anywhere):
                    bucket.add(f"{PACKAGE}.commands.{p.stem}")
    return result


def _with_parents(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']: importing a module runs its parents too."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(roots: list[str], *, function_local: bool) -> dict[str, set[str]]:
    """Package modules reached from `roots` -> the third-party top-level names each imports."""
    seen: dict[str, set[str]] = {}
    todo = [m for r in roots for m in _with_parents(r)]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen[mod] = set()
        info = module_imports(mod)
        for target in info.anywhere if function_local else info.top_level:
            top = target.split(".")[0]
            if top == PACKAGE:
                todo += [m for m in _with_parents(target) if _module_file(m)]
            elif top and top not in sys.stdlib_module_names:
                seen[mod].add(top)
    return seen


def env_imports(env: str, rules: list[Rule]) -> dict[str, list[str]]:
    """Third-party top-level module -> the package modules importing it, for an env's rules:
    what `python -m mmfusion` imports at start-up (top-level imports only: the handlers'
    heavy imports are function-local) plus everything the env's command modules reach."""
    modules = sorted({r.module for r in rules if r.env == env})
    found: dict[str, set[str]] = collections.defaultdict(set)
    for closure_map in (closure([f"{PACKAGE}.__main__"], function_local=False),
                        closure(modules, function_local=True)):
        for mod, names in closure_map.items():
            for n in names:
                found[n].add(mod)
    return {k: sorted(v) for k, v in sorted(found.items())}


# ---------------------------------------------------------------------------------------
# check

@dataclass
class CheckResult:
    """What `check` found: the mapping, the rules, the modules each env needs, problems."""
    envs: dict[str, EnvMap]
    rules: list[Rule]
    needed: dict[str, dict[str, list[str]]]   # env -> module -> importers
    problems: list[str]
    report: list[str]


def run_check(mapping: Path = DEFAULT_MAPPING, envs_dir: Path | None = None) -> CheckResult:
    """The fast check (YAML + AST, installs nothing): the mapping against env files and imports."""
    envs, problems = load_mapping(mapping, envs_dir)
    rules, rule_problems = workflow_rules()
    problems += rule_problems
    report: list[str] = []
    needed: dict[str, dict[str, list[str]]] = {}
    for env in sorted({r.env for r in rules} - set(envs)):
        problems.append(f"rules {[r.name for r in rules if r.env == env]} use env {env!r}, "
                        "which the mapping does not cover")
    for name, emap in envs.items():
        env_rules = [r for r in rules if r.env == name]
        if not env_rules:
            problems.append(f"{name}: no rule uses this env")
            continue
        imports = env_imports(name, rules)
        needed[name] = imports
        report.append(f"[{name}] rules: {', '.join(sorted({r.name for r in env_rules}))}")
        report.append(f"[{name}] commands: {', '.join(sorted({r.command for r in env_rules}))}")
        for mod, importers in imports.items():
            entry = emap.provider(mod)
            if entry is not None:
                report.append(f"[{name}]   {mod:<12} <- {entry.line}")
            elif mod in emap.not_needed:
                report.append(f"[{name}]   {mod:<12} <- (none: not needed by the rules, see "
                              "not_needed_imports; `run` proves the rules run without it)")
            else:
                shown = ", ".join(importers[:4]) + (" ..." if len(importers) > 4 else "")
                problems.append(f"{name}: MISSING: module {mod!r} (imported by {shown}) is "
                                f"provided by no package of {emap.file.name}")
        for mod in emap.not_needed:
            if mod not in imports:
                problems.append(f"{name}: not_needed_imports lists {mod!r}, which no module "
                                "of the env's rules imports: remove it")
            elif emap.provider(mod):
                problems.append(f"{name}: not_needed_imports lists {mod!r}, which "
                                f"{emap.provider(mod).line!r} provides: remove it")
        for e in emap.entries:
            if e.pypi is None:
                continue
            used = [m for m in e.imports if m in imports]
            if used and e.indirect:
                problems.append(f"{name}: {e.line!r} is marked indirect but {used} is imported "
                                "by the env's modules: drop `indirect`")
            elif not used and not e.indirect:
                problems.append(f"{name}: EXTRA: {e.line!r} is imported by no module of the "
                                "env's rules and gives no reason (`indirect`): drop it from "
                                f"{emap.file.name} or say why it is needed")
            elif not used:
                report.append(f"[{name}]   (indirect) {e.line}: {' '.join(e.indirect.split())}")
    return CheckResult(envs, rules, needed, problems, report)

