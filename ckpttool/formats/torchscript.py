"""What a TorchScript archive's `code/` declares, read as text and never executed.

`torch.jit.save` writes each class's source under `code/`: a class
`__torch__.a.b.Name` lives in `code/__torch__/a/b.py` (`__torch__.Name` in
`code/__torch__.py`), and a Module's body starts with its slot declarations:

    class Name(Module):
      __parameters__ = ["weight", "bias", ]
      __buffers__ = ["running_mean", ]
      weight : Tensor
      _state : Tensor          <- a plain attribute: in no state_dict

`torch.jit.load(f).state_dict()` holds exactly the declared parameters and buffers,
so these lines are all that is needed to tell them from plain tensor attributes.
"""

from __future__ import annotations

import re
from typing import Any

from ckpttool.checkpoint import PickledObject, ScriptDeclaration
from ckpttool.formats.ziparchive import ZipArchive, read_entry
from ckpttool.weights import walk

MAX_CODE_BYTES = 64 << 20  # all of code/ together; past it declarations stay unknown
SCRIPT_PREFIX = "__torch__"
_CLASS = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)\(([^)]*)\):")
_SLOTS = re.compile(r"^\s+(__parameters__|__buffers__) = \[(.*)\]\s*$")
_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"')


def read_declarations(archive: ZipArchive) -> dict[str, ScriptDeclaration]:
    """Qualified class name -> its declaration, for every class in `code/`."""
    found: dict[str, ScriptDeclaration] = {}
    budget = MAX_CODE_BYTES
    prefix = f"{archive.root}/code/"
    for name in archive.order:
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        entry = archive.entries[name]
        budget -= entry.size
        if budget < 0:
            archive.anomalies.append(f"code/ holds over {MAX_CODE_BYTES} bytes: declarations not read past it")
            break
        text = read_entry(archive, entry, entry.size).decode("utf-8", "replace")
        found.update(parse_declarations(_module_name(name[len(prefix) :]), text))
    return found


def _module_name(relative: str) -> str:
    """`__torch__/torch/nn/modules/linear.py` -> `__torch__.torch.nn.modules.linear`."""
    return relative.removesuffix(".py").replace("/", ".")


def parse_declarations(module: str, text: str) -> dict[str, ScriptDeclaration]:
    """Each top-level class of one code file with its `__parameters__` and `__buffers__`."""
    classes: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        header = _CLASS.match(line)
        if header:
            current = classes[f"{module}.{header.group(1)}"] = {"is_module": header.group(2).strip() == "Module"}
            continue
        if line and not line[0].isspace():
            current = None  # a top-level function or statement ends the class body
            continue
        slots = _SLOTS.match(line)
        if current is not None and slots:
            current[slots.group(1)] = tuple(_unescape(n) for n in _NAME.findall(slots.group(2)))
    return {
        name: ScriptDeclaration(c["is_module"], c.get("__parameters__", ()), c.get("__buffers__", ()))
        for name, c in classes.items()
    }


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)


def declare(root: Any, declarations: dict[str, ScriptDeclaration]) -> None:
    """Attach its class's declaration to every TorchScript object in the tree."""
    for _, node in walk(root):
        if isinstance(node, PickledObject) and node.cls.startswith(SCRIPT_PREFIX + "."):
            node.declared = declarations.get(node.cls)
