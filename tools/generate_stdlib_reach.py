"""Write `ckpttool/pickle/stdlib_reach.py`: the standard-library modules whose code reaches
processes, files, imports or evaluation, read from the standard library itself.

Run it with the Python ckpttool supports (`python tools/generate_stdlib_reach.py`), review
the diff, commit both. Python-source modules are read with `ast`, never imported: a module
reaches what its own code calls (a `subprocess` import, `os.system`, `open(...)`,
`eval`/`exec`/`compile`, `__import__`/`importlib`, `pickle`/`marshal` loads, sockets). Every
name in such a module is a gadget unless vetted: its classes and functions share that
code. Extension modules (no source) are imported, which runs only the interpreter's own C
code, and only their members of that reach are listed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import sysconfig
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "ckpttool" / "pickle" / "stdlib_reach.py"

# Modules whose import alone means the code reaches that far.
_IMPORT_REACH = {
    **dict.fromkeys(
        ("subprocess", "_posixsubprocess", "pty", "multiprocessing", "concurrent.futures.process"), "processes"
    ),
    **dict.fromkeys(("shutil", "tempfile", "mmap", "fcntl", "glob", "fileinput", "sqlite3", "dbm"), "files"),
    **dict.fromkeys(("importlib", "imp", "zipimport", "pkgutil", "runpy"), "imports"),
    **dict.fromkeys(("marshal", "pickle", "_pickle", "code", "codeop", "ctypes", "_ctypes"), "evaluation"),
    **dict.fromkeys(("socket", "_socket", "ssl", "http.client", "urllib.request", "ftplib", "smtplib"), "processes"),
}  # fmt: skip
# Attributes of `os` (and of posix/nt) that start programs or change files.
_OS_PROCESS = ("system", "popen", "fork", "forkpty", "kill", "killpg", "startfile", "posix_spawn", "posix_spawnp")
_OS_PROCESS_PREFIXES = ("exec", "spawn")
_OS_FILES = (
    "open", "fdopen", "remove", "unlink", "rename", "renames", "replace", "rmdir", "removedirs", "mkdir",
    "makedirs", "chmod", "chown", "lchown", "truncate", "symlink", "link", "utime", "listdir", "scandir", "walk",
    "mkfifo", "mknod", "write", "read",
)  # fmt: skip
# Builtins (called by their bare name) of that reach.
_BUILTIN_REACH = {
    "open": "files", "eval": "evaluation", "exec": "evaluation", "compile": "evaluation",
    "__import__": "imports", "breakpoint": "evaluation", "input": "processes",
}  # fmt: skip
# Members of extension modules of that reach, by name.
_MEMBER_REACH = {
    **_BUILTIN_REACH,
    **dict.fromkeys(_OS_PROCESS, "processes"),
    **dict.fromkeys(_OS_FILES, "files"),
    "loads": "evaluation", "load": "evaluation", "Unpickler": "evaluation",
    "socket": "processes", "connect": "processes", "dlopen": "imports", "CDLL": "imports",
}  # fmt: skip
_OS_NAMES = ("os", "posix", "nt")


def _os_call(attr: str) -> str | None:
    if attr in _OS_PROCESS or attr.startswith(_OS_PROCESS_PREFIXES):
        return "processes"
    return "files" if attr in _OS_FILES else None


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def _reach_of_node(node: ast.AST) -> str | None:
    for name in _imported(node):
        for prefix, reach in _IMPORT_REACH.items():
            if name == prefix or name.startswith(prefix + "."):
                return reach
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _BUILTIN_REACH.get(node.func.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in _OS_NAMES:
        return _os_call(node.attr)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("io", "builtins"):
        return _BUILTIN_REACH.get(node.attr)
    return None


def source_reach(path: Path) -> list[str]:
    tree = ast.parse(path.read_bytes(), str(path))
    return sorted({r for node in ast.walk(tree) if (r := _reach_of_node(node))})


def stdlib_sources() -> dict[str, Path]:
    """module name -> source file, listed from the files (nothing imported)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] not in sys.stdlib_module_names or "test" in parts or "tests" in parts:
            continue
        if "site-packages" in parts or not all(p.isidentifier() for p in parts):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def extension_members() -> dict[str, str]:
    """`module.member` -> reach, for standard-library modules written in C."""
    members: dict[str, str] = {}
    for name in sorted(sys.stdlib_module_names):
        if name in sys.builtin_module_names or _is_extension(name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated modules say so on import
                module = importlib.import_module(name)
            for member, reach in _MEMBER_REACH.items():
                if callable(getattr(module, member, None)):
                    members[f"{name}.{member}"] = reach
    return members


def _is_extension(name: str) -> bool:
    spec = importlib.util.find_spec(name) if name not in ("__main__", "antigravity", "this") else None
    return bool(spec and spec.origin and not spec.origin.endswith(".py") and spec.origin != "frozen")


def generating_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def render(modules: dict[str, list[str]], members: dict[str, str], version: str | None = None) -> str:
    """The module's text; `version` (major.minor.patch) is the running Python's unless given."""
    version = version or generating_version()
    lines = [
        '"""Generated by tools/generate_stdlib_reach.py from the standard library of Python '
        f"{'.'.join(version.split('.')[:2])}; do not edit.",
        "",
        "`REACHING_MODULES`: Python-source modules whose own code reaches processes, files, imports or",
        "evaluation. `REACHING_MEMBERS`: such members of the modules written in C. `GENERATED_WITH`: the",
        "Python that read them (another patch or minor version's standard library may differ).",
        '"""',
        "",
        f'GENERATED_WITH = "{version}"',
        "",
        "REACHING_MODULES: dict[str, str] = {",
        *(f'    "{name}": "{", ".join(reach)}",' for name, reach in sorted(modules.items())),
        "}",
        "",
        "REACHING_MEMBERS: dict[str, str] = {",
        *(f'    "{name}": "{reach}",' for name, reach in sorted(members.items())),
        "}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    modules = {name: reach for name, path in stdlib_sources().items() if (reach := source_reach(path))}
    OUT.write_text(render(modules, extension_members()))
    print(f"{OUT}: {len(modules)} modules")


if __name__ == "__main__":
    main()
