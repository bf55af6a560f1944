"""Names never to allowlist: what a `--allow` remedy or an `add_safe_globals` line must not
invite, beyond the known gadgets of `allowlist.danger_reason`.

- the standard library's modules whose own code reaches processes, files, imports or
  evaluation (`stdlib_reach`, generated from the standard library by
  tools/generate_stdlib_reach.py), and such members of its C modules;
- modules no checkpoint needs (IDEs, code converters, profilers, config loaders);
- a name reached through another object's attribute (`Class.method`, `module.attr`):
  what it is cannot be known without importing;
- a private function (`_name`): anything but a class the pickle only instantiates.

A vetted name (`vetted`, `vetted_classes`) is exempt: each was read for what it does.
"""

from __future__ import annotations

import sys

from ckpttool.pickle.stdlib_reach import REACHING_MEMBERS, REACHING_MODULES

# Packages whose classes are vetted one by one, like the standard library's: torch, numpy,
# and what installing torch brings along (its wheel's other packages and its requirements),
# which a hostile file can count on finding wherever torch.load runs. Their classes are no
# user's own model: sympy's Matrix sympifies (evaluates) the strings NEWOBJ hands it.
INTERNAL_PACKAGES = frozenset(
    {"torch", "numpy", "functorch", "torchgen", "sympy", "isympy", "mpmath", "networkx", "jinja2", "markupsafe",
     "filelock", "fsspec", "typing_extensions", "setuptools", "pkg_resources", "_distutils_hack", "triton", "cuda",
     "nvidia"}
)  # fmt: skip

# A prefix covers the submodules.
NEEDLESS_MODULES = frozenset(
    {"idlelib", "lib2to3", "pydoc", "pydoc_data", "turtle", "turtledemo", "tkinter", "wsgiref", "mailbox",
     "configparser", "wave", "aifc", "sunau", "cgi", "cgitb", "smtpd", "curses", "dbm", "xmlrpc", "distutils",
     "unittest", "test", "torch.utils.bottleneck", "torch.utils._config_module", "torch.utils.benchmark",
     "torch.testing", "torch.utils.hipify", "torch.utils.tensorboard", "torch._logging", "torch.onnx",
     "torch.export", "torch._export", "torch.compiler", "torch._functorch", "torch._higher_order_ops",
     "torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run", "torch.backends",
     # installed with torch, and evaluating: sympify runs strings as Python, jinja2 compiles templates to it
     "sympy", "isympy", "jinja2",
     # importing them is their effect (the unpickler imports a module before it looks the name up):
     # antigravity opens a web browser, the others print
     "antigravity", "this", "__hello__", "__phello__"}
)  # fmt: skip


# `package.__main__` is `python -m package`: importing it runs the program (on the loading
# process's own command line). `__main__` alone is the running script, where pickled classes live.
_MAIN = "__main__"


def is_internal(module: str) -> bool:
    """The standard library, torch, numpy or what torch installs with it: classes ckpttool
    vets before calling them inert."""
    top = module.split(".", 1)[0]
    return top in sys.stdlib_module_names or top in INTERNAL_PACKAGES


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _reached_through_attribute(module: str, name: str) -> bool:
    """`Outer.Inner` of the user's own package is a nested class; a lower-case or private
    part, or any dotted name in the standard library, torch or numpy, is `Class.method`
    or `module.attr`."""
    parts = name.split(".")
    if len(parts) == 1:
        return False
    return is_internal(module) or any(not p[:1].isupper() for p in parts)


def gadget_label(module: str, name: str, class_only: bool) -> str | None:
    """Why `module.name` is dangerous to allowlist, or None. `class_only`: the pickle only
    instantiates it (a private class of the user's own package is still a class)."""
    if _MAIN in module.split(".")[1:]:
        return f"{module}: a package's command-line program, which runs when imported; never allowlist it"
    for prefix in _prefixes(module):
        if prefix in NEEDLESS_MODULES:
            return f"{prefix}: a module no checkpoint needs; never allowlist it"
    if module in REACHING_MODULES:
        return f"the standard library's {module} reaches {REACHING_MODULES[module]}; never allowlist it"
    if f"{module}.{name}" in REACHING_MEMBERS:
        return f"reaches {REACHING_MEMBERS[f'{module}.{name}']}; never allowlist it"
    if _reached_through_attribute(module, name):
        return (
            "a name reached through another object's attribute (Class.method or module.attr): what it is "
            "cannot be known without importing; never allowlist it"
        )
    if not class_only and any(p.startswith("_") for p in name.split(".")):
        return "a private function (a leading underscore): never allowlist it"
    return None
