"""Opcode handlers for the places an ordinary unpickler runs code: GLOBAL, STACK_GLOBAL,
REDUCE, NEWOBJ, INST, OBJ, BUILD, persistent ids and extension codes. Each records what
would have happened, as an inert `Call`, and how each global was used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckpttool.pickle.objects import CALL, INST, NEWOBJ, UNSET, Call, Extension, PersistentRef
from ckpttool.pickle.state import (
    USE_BUILD,
    USE_CALL,
    USE_INSTANTIATE,
    MachineState,
    TrackedGlobal,
    describe,
    short_repr,
)

# Allowlisted torch functions that call or instantiate an argument: (position, use).
REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
WRAPPER_SUBCLASS = "torch._utils._rebuild_wrapper_subclass"
ARGUMENT_USES: dict[str, tuple[tuple[int, str], ...]] = {
    REBUILD_FROM_TYPE: ((0, USE_CALL), (1, USE_INSTANTIATE)),
    WRAPPER_SUBCLASS: ((0, USE_INSTANTIATE),),
}


def passed_arguments(qualname: str, args: tuple[Any, ...]) -> tuple[Any, Any]:
    """`_rebuild_from_type_v2(func, new_type, args, state)` calls `func(*args)`: the function
    and the arguments it is given, or (None, None) for any other call."""
    if qualname == REBUILD_FROM_TYPE and len(args) > 2 and type(args[2]) is tuple:
        return args[0], args[2]
    return None, None


class CallOpcodes(MachineState):
    def read_global_name(self, pos: int) -> tuple[str, str, int]:
        module, pos = self.line(pos, name=True)
        name, pos = self.line(pos, name=True)
        try:
            return module.decode("utf-8"), name.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise self.error("global name is not valid UTF-8", self.op_pos) from None

    def op_global(self, pos: int) -> int:
        module, name, new = self.read_global_name(pos)
        self.stack.append(self.make_global(module, name))
        return new

    def op_stack_global(self, pos: int) -> int:
        name = self.stack.pop()
        module = self.stack.pop()
        if type(module) is not str or type(name) is not str:
            raise self.error(
                f"STACK_GLOBAL on {describe(module)} and {describe(name)}: a name "
                "computed at load time, which cannot be resolved statically",
                self.op_pos,
            )
        self.stack.append(self.make_global(module, name))
        return pos

    def reduce(self, func: Any, args: Any) -> Any:
        if type(args) is not tuple:
            raise self.error(f"REDUCE arguments are {describe(args)}, not a tuple", self.op_pos)
        if type(func) is TrackedGlobal:
            func.uses.add(USE_CALL)
            for position, use in ARGUMENT_USES.get(func.qualname, ()):
                self.note_argument(func, args, position, use)
            inner, passed = passed_arguments(func.qualname, args)
            if isinstance(inner, TrackedGlobal):  # the uses of the function it calls, too
                for position, use in ARGUMENT_USES.get(inner.qualname, ()):
                    self.note_argument(inner, passed, position, use)
        else:
            self.note_call(func, USE_CALL, "REDUCE")
        return self.record(Call(func, args, CALL))

    def record(self, call: Call) -> Call:
        self.calls.append(call)
        return call

    def note_argument(self, func: TrackedGlobal, args: tuple[Any, ...], position: int, use: str) -> None:
        """An allowlisted function that calls (or instantiates) one of its arguments passes
        that use on: allowlisting the argument would let torch run it."""
        if position >= len(args):
            return
        target = args[position]
        if isinstance(target, TrackedGlobal):
            target.uses.add(use)
        elif not isinstance(target, Call):
            self.problem(f"{func.qualname} given {describe(target)} to {use}")

    def persistent_ref(self, pid: Any) -> PersistentRef:
        if not (type(pid) is tuple and pid and pid[0] == "storage"):
            # torch's weights_only unpickler loads storages only (legacy module ids included);
            # torch.load(weights_only=False) fails on any other id but a legacy module's class.
            self.refusal(f"persistent id {short_repr(pid)} is not a storage")
        return PersistentRef(pid)

    def op_newobj(self, pos: int) -> int:
        args = self.stack.pop()
        cls = self.stack[-1]
        if type(args) is not tuple:
            raise self.error(f"NEWOBJ arguments are {describe(args)}, not a tuple", self.op_pos)
        self.note_call(cls, USE_INSTANTIATE, "NEWOBJ")
        self.stack[-1] = self.record(Call(cls, args, NEWOBJ))
        return pos

    def op_newobj_ex(self, pos: int) -> int:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack[-1]
        if type(args) is not tuple or type(kwargs) is not dict:
            raise self.error("NEWOBJ_EX needs a tuple and a dict", self.op_pos)
        self.note_call(cls, USE_INSTANTIATE, "NEWOBJ_EX")
        call = self.record(Call(cls, args, NEWOBJ))
        call.kwargs = kwargs
        self.stack[-1] = call
        return pos

    def op_inst(self, pos: int) -> int:
        module, name, new = self.read_global_name(pos)
        cls = self.make_global(module, name)
        args = tuple(self.pop_mark())
        self.note_call(cls, USE_CALL, "INST")
        self.stack.append(self.record(Call(cls, args, INST)))
        return new

    def op_obj(self, pos: int) -> int:
        items = self.pop_mark()
        if not items:
            raise self.error("OBJ without a class", self.op_pos)
        self.note_call(items[0], USE_CALL, "OBJ")
        self.stack.append(self.record(Call(items[0], tuple(items[1:]), INST)))
        return pos

    def op_build(self, pos: int) -> int:
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, Call):
            self.problem(f"BUILD on {describe(target)}: sets attributes of an existing object", lossy=True)
        elif target.state is not UNSET:
            self.problem(f"BUILD applied twice to {describe(target)}", lossy=True)
        else:
            target.state = state
            if isinstance(target.func, TrackedGlobal):
                target.func.uses.add(USE_BUILD)
        return pos if self.hooks.after_build is None else self.inline_data(target, pos)

    def inline_data(self, target: Any, pos: int) -> int:
        """Skip the bytes a reader keeps after BUILD. They are read from the file past the
        current frame, so BUILD must end its frame; the next opcodes open a new one."""
        assert self.hooks.after_build is not None
        after = self.hooks.after_build(target, pos)
        if after == pos:
            return pos
        if self.frame_end is not None and self.frame_end != pos:
            raise self.error("data kept after BUILD inside a frame: readers disagree on where it is", pos)
        if self.frame_end is not None:
            self.frame_end = after
        return after

    def op_persid(self, pos: int) -> int:
        text, new = self.line(pos)
        try:
            self.stack.append(self.persistent_ref(text.decode("ascii")))
        except UnicodeDecodeError:
            raise self.error("persistent id is not ASCII", pos) from None
        return new

    def op_ext(self, size: int) -> Callable[[int], int]:
        def handler(pos: int) -> int:
            new = self.fixed(pos, size)
            code = int.from_bytes(self.data[pos:new], "little")
            self.problem(f"extension code {code}: resolved through the copyreg registry", lossy=True)
            self.stack.append(Extension(code))
            return new

        return handler
