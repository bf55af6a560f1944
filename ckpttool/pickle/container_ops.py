"""Opcode handlers for containers and the memo: lists, dicts, sets, APPEND(S),
SETITEM(S), PUT/GET. SETITEM(S) and APPEND(S) on anything but a real container is
what torch refuses (GHSA-63cw-57p8-fm3p), and is noted as a problem."""

from __future__ import annotations

from typing import Any

from ckpttool.pickle.objects import NEWOBJ, Call
from ckpttool.pickle.state import DICT_LIKE_GLOBALS, MachineState, describe, short_repr


class ContainerOpcodes(MachineState):
    def op_empty_list(self, pos: int) -> int:
        self.stack.append([])
        return pos

    def op_list(self, pos: int) -> int:
        items = self.pop_mark()
        self.stack.append(items)
        return pos

    def op_dict(self, pos: int) -> int:
        items = self.pop_mark()
        if len(items) % 2:
            raise self.error("DICT with an odd number of items", self.op_pos)
        pairs = {self.checked_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}
        self.stack.append(pairs)
        return pos

    def op_empty_set(self, pos: int) -> int:
        self.stack.append(set())
        return pos

    def op_frozenset(self, pos: int) -> int:
        members = frozenset(self.checked_key(i) for i in self.pop_mark())
        self.stack.append(members)
        return pos

    def op_additems(self, pos: int) -> int:
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, set):
            target.update(self.checked_key(i) for i in items)
        else:
            self.problem(f"ADDITEMS on {describe(target)}, which is not a set", lossy=True)
        return pos

    def op_append(self, pos: int) -> int:
        item = self.stack.pop()
        self.append_items(self.stack[-1], [item], "APPEND")
        return pos

    def op_appends(self, pos: int) -> int:
        items = self.pop_mark()
        self.append_items(self.stack[-1], items, "APPENDS")
        return pos

    def append_items(self, target: Any, items: list[Any], opcode: str) -> None:
        if type(target) is list:
            target.extend(items)
            return
        if not isinstance(target, Call):
            self.problem(f"{opcode} on {describe(target)}, which torch refuses", lossy=True)
            return
        if target.kind != NEWOBJ:
            # Calls the result's own append/extend; whether that is harmless is the verdict's call.
            self.refusal(f"{opcode} on {describe(target)}, which torch refuses")
        target.items = (target.items or []) + items

    def op_setitem(self, pos: int) -> int:
        value = self.stack.pop()
        key = self.stack.pop()
        self.set_items(self.stack[-1], [key, value], "SETITEM")
        return pos

    def set_items(self, target: Any, items: list[Any], opcode: str) -> None:
        if isinstance(target, dict):
            for i in range(0, len(items), 2):
                key = self.checked_key(items[i])
                if key in target:
                    # Python's pickler writes each key once. A dict given to BUILD or a call
                    # before this opcode gave it the old value, which the graph no longer holds.
                    self.problem(f"{opcode} replaces the value of key {short_repr(key)} in a dict", lossy=True)
                target[key] = items[i + 1]
            return
        if not isinstance(target, Call):
            self.problem(f"{opcode} on {describe(target)}, which torch refuses", lossy=True)
            return
        if target.func_name not in DICT_LIKE_GLOBALS:
            # GHSA-63cw-57p8-fm3p: SETITEM on other objects calls their __setitem__; the verdict
            # judges that from the call's `dictitems`.
            self.refusal(f"{opcode} on {describe(target)}, which torch refuses")
        pairs = [(self.checked_key(items[i]), items[i + 1]) for i in range(0, len(items), 2)]
        target.dictitems = (target.dictitems or []) + pairs

    # memo

    def op_put(self, pos: int) -> int:
        text, new = self.line(pos)
        index = self.parse_int(text, pos)
        if index < 0:
            raise self.error("negative PUT argument", pos)
        self.memo_put(index, self.stack[-1])
        return new

    def op_memoize(self, pos: int) -> int:
        self.memo_put(len(self.memo), self.stack[-1])
        return pos

    def op_get(self, pos: int) -> int:
        text, new = self.line(pos)
        self.stack.append(self.memo_get(self.parse_int(text, pos)))
        return new

    # globals, calls and objects: the places an ordinary unpickler runs code
