"""Stand-ins for classes that libraries pickle into checkpoints (transformers, accelerate,
Lightning, torchvision, fairseq), for tests: the real libraries are not installed. Each
mirrors how its original pickles: an `enum` member by its value, a dataclass by its
`__dict__`, a module as its class and state. Imported by the subprocess that saves the files and by the one
that loads them back."""

from __future__ import annotations

import enum
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import torch


class ExplicitEnum(str, enum.Enum):  # noqa: UP042 - transformers' own spelling, pickled as such
    """transformers.utils.generic.ExplicitEnum: a str enum, pickled as Cls('value')."""


class IntervalStrategy(ExplicitEnum):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SchedulerType(ExplicitEnum):
    LINEAR = "linear"
    COSINE = "cosine"


@dataclass
class TrainingArguments:
    """A training-arguments dataclass of a library ckpttool does not vet, shaped as
    transformers' (str enums called with their values): its enums stay unknown calls. The
    real transformers.TrainingArguments, under its own names, is `HFTrainingArguments`."""

    output_dir: str = "out"
    learning_rate: float = 5e-5
    num_train_epochs: float = 3.0
    eval_strategy: IntervalStrategy = IntervalStrategy.STEPS
    save_strategy: IntervalStrategy = IntervalStrategy.EPOCH
    lr_scheduler_type: SchedulerType = SchedulerType.COSINE
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    seed: int = 42


class TinyClassifier(torch.nn.Module):
    """A user's model, saved whole (torch.save(model)) as tutorials show."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body(x))


class ResNetLike(torch.nn.Module):
    """torchvision.models.resnet.ResNet's shape: it holds its norm layer's class
    (`self._norm_layer = nn.BatchNorm2d`) and builds its blocks with it."""

    def __init__(self) -> None:
        super().__init__()
        self._norm_layer = torch.nn.BatchNorm2d
        self.conv1 = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = self._norm_layer(4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn1(self.conv1(x)).mean((2, 3)))


# -- the classes under their libraries' own names ------------------------------------------------
# Registered as modules of those names (`register_library_names`) in the processes that save
# and load the files, so the pickles name transformers.trainer_utils.IntervalStrategy and so on,
# as the real libraries' do; checked against files transformers 5.25 and 4.46, accelerate
# 1.16 and 1.1 and Lightning 2.6 (Fabric.save) wrote (same globals, same NEWOBJ/BUILD and REDUCE shapes).


def _enum(base: type[enum.Enum], module: str, name: str, values: list[str]) -> type[enum.Enum]:
    members = [(v.upper(), v) for v in values]
    made: type[enum.Enum] = base(name, members, module=module, qualname=name)  # type: ignore[call-overload]
    return made


class _DistributedBase(str, enum.Enum):  # noqa: UP042 - accelerate's own spelling, pickled as such
    """accelerate.utils.dataclasses.DistributedType's base: a str enum with Enum's own _missing_."""


_TRAINER_UTILS = "transformers.trainer_utils"
HF_ENUMS: dict[str, type[enum.Enum]] = {
    "IntervalStrategy": _enum(ExplicitEnum, _TRAINER_UTILS, "IntervalStrategy", ["no", "steps", "epoch"]),
    "SaveStrategy": _enum(ExplicitEnum, _TRAINER_UTILS, "SaveStrategy", ["no", "steps", "epoch", "best"]),
    "HubStrategy": _enum(ExplicitEnum, _TRAINER_UTILS, "HubStrategy", ["end", "every_save", "checkpoint"]),
    "SchedulerType": _enum(ExplicitEnum, _TRAINER_UTILS, "SchedulerType", ["linear", "cosine"]),
    "OptimizerNames": _enum(ExplicitEnum, "transformers.training_args", "OptimizerNames", ["adamw_torch_fused"]),
    "FSDPOption": _enum(ExplicitEnum, _TRAINER_UTILS, "FSDPOption", ["full_shard", "auto_wrap"]),
    "DebugOption": _enum(ExplicitEnum, "transformers.debug_utils", "DebugOption", ["underflow_overflow"]),
    "DistributedType": _enum(_DistributedBase, "accelerate.utils.dataclasses", "DistributedType", ["NO", "MULTI_GPU"]),
}


@dataclass
class AcceleratorConfig:
    """transformers.trainer_pt_utils.AcceleratorConfig: a dataclass of flags."""

    split_batches: bool = False
    dispatch_batches: bool | None = None
    even_batches: bool = True
    use_seedable_sampler: bool = True


class PartialState:
    """accelerate.state.PartialState: a plain class, pickled as NEWOBJ and its __dict__."""

    def __init__(self) -> None:
        self._cpu = True
        self.backend = None
        self.device = torch.device("cpu")
        self.debug = False
        self.distributed_type = HF_ENUMS["DistributedType"]("NO")
        self.num_processes = 1
        self.process_index = 0


@dataclass
class HFTrainingArguments:
    """transformers.TrainingArguments as Trainer saves it in checkpoint-N/training_args.bin."""

    output_dir: str = "out"
    learning_rate: float = 5e-5
    lr_scheduler_type: Any = field(default_factory=lambda: HF_ENUMS["SchedulerType"]("cosine"))
    optim: Any = field(default_factory=lambda: HF_ENUMS["OptimizerNames"]("adamw_torch_fused"))
    eval_strategy: Any = field(default_factory=lambda: HF_ENUMS["IntervalStrategy"]("steps"))
    logging_strategy: Any = field(default_factory=lambda: HF_ENUMS["IntervalStrategy"]("no"))
    save_strategy: Any = field(default_factory=lambda: HF_ENUMS["SaveStrategy"]("steps"))
    hub_strategy: Any = field(default_factory=lambda: HF_ENUMS["HubStrategy"]("every_save"))
    fsdp: list[Any] = field(default_factory=lambda: [HF_ENUMS["FSDPOption"]("full_shard")])  # transformers 4
    debug: list[Any] = field(default_factory=lambda: [HF_ENUMS["DebugOption"]("underflow_overflow")])
    accelerator_config: AcceleratorConfig = field(default_factory=AcceleratorConfig)
    distributed_state: PartialState = field(default_factory=PartialState)
    _setup_devices: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report_to: list[str] = field(default_factory=list)


class AttributeDict(dict[str, Any]):
    """lightning.fabric.utilities.data.AttributeDict: a dict whose attributes are its items,
    pickled as NEWOBJ and SETITEMS (no BUILD: it has no __dict__ of its own to save)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key: str, val: Any) -> None:
        self[key] = val


class OmegaConfMetadata:
    """omegaconf.base.Metadata (ContainerMetadata too): a node's key and flags."""

    def __init__(self, key: Any = None) -> None:
        self.ref_type, self.object_type, self.optional, self.key, self.flags = Any, None, True, key, {}


class OmegaConfNode:
    """omegaconf.nodes.AnyNode: pickled as NEWOBJ and BUILD of its __dict__, `_val` its value
    and `_parent` the container holding it (a cycle)."""

    def __init__(self, value: Any, parent: Any = None, key: Any = None) -> None:
        self._metadata, self._parent, self._val = OmegaConfMetadata(key), parent, value


class OmegaConfContainer:
    """omegaconf's DictConfig and ListConfig as they pickle: `_content` holds a node per
    item (a mapping, or a list); nested configs are containers themselves."""

    def __init__(self, content: Any) -> None:
        self._metadata, self._parent = OmegaConfMetadata(), None
        items = content.items() if isinstance(content, dict) else enumerate(content)
        nodes = {k: self._node(v, k) for k, v in items}
        self._content = nodes if isinstance(content, dict) else list(nodes.values())

    def _node(self, value: Any, key: Any) -> Any:
        if isinstance(value, (dict, list)):
            child = DictConfig(value) if isinstance(value, dict) else ListConfig(value)
            child._parent = self
            return child
        return OmegaConfNode(value, self, key)

    def to_container(self) -> Any:
        """OmegaConf.to_container: the plain values."""

        def plain(node: Any) -> Any:
            return node.to_container() if isinstance(node, OmegaConfContainer) else node._val

        if isinstance(self._content, dict):
            return {k: plain(v) for k, v in self._content.items()}
        return [plain(v) for v in self._content]


class DictConfig(OmegaConfContainer):
    pass


class ListConfig(OmegaConfContainer):
    pass


def _library_classes() -> dict[str, dict[str, Any]]:
    names: dict[str, dict[str, Any]] = {}
    for cls in HF_ENUMS.values():
        names.setdefault(cls.__module__, {})[cls.__name__] = cls
    names.setdefault("transformers.trainer_pt_utils", {})["AcceleratorConfig"] = AcceleratorConfig
    names.setdefault("accelerate.state", {})["PartialState"] = PartialState
    names.setdefault("lightning.fabric.utilities.data", {})["AttributeDict"] = AttributeDict
    names.setdefault("omegaconf.base", {})["Metadata"] = OmegaConfMetadata
    names.setdefault("omegaconf.nodes", {})["AnyNode"] = OmegaConfNode
    names.setdefault("omegaconf.dictconfig", {})["DictConfig"] = DictConfig
    names.setdefault("omegaconf.listconfig", {})["ListConfig"] = ListConfig
    names.setdefault("transformers.training_args", {})["TrainingArguments"] = HFTrainingArguments
    return names


def register_library_names() -> None:
    """Make the stand-ins importable, and pickled, under the libraries' module names (this
    process only; a real transformers or accelerate installed beside is shadowed)."""
    for module_name, classes in _library_classes().items():
        parts = module_name.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            module = sys.modules.get(name)
            if module is None or not getattr(module, "__standin__", False):
                module = types.ModuleType(name)
                module.__standin__ = True  # type: ignore[attr-defined]
                module.__path__ = []  # type: ignore[attr-defined]  # a package, for the submodules
                sys.modules[name] = module
            if depth > 1:
                setattr(sys.modules[".".join(parts[: depth - 1])], parts[depth - 1], module)
        for class_name, cls in classes.items():
            cls.__module__, cls.__qualname__ = module_name, class_name
            setattr(sys.modules[module_name], class_name, cls)
