"""Write checkpoints the ways libraries save them, into OUT (run in a subprocess with this
folder on sys.path, so that the stand-in classes pickle under the module `standins`).

    python tests/realworld/make_realworld.py OUT
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from standins import (
    AttributeDict,
    HFTrainingArguments,
    IntervalStrategy,
    ResNetLike,
    TinyClassifier,
    TrainingArguments,
    register_library_names,
)


def _model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()


def _optimizer_state(model: torch.nn.Module) -> dict[str, Any]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def lightning_checkpoint(model: TinyClassifier) -> dict[str, Any]:
    """What Lightning's Trainer.save_checkpoint writes (hyper-parameters as a dict)."""
    return {
        "epoch": 4,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                "best_model_score": torch.tensor(0.125),
                "best_model_path": "checkpoints/epoch=3.ckpt",
                "best_k_models": {"checkpoints/epoch=3.ckpt": torch.tensor(0.125)},
            }
        },
        "optimizer_states": [_optimizer_state(model)],
        "lr_schedulers": [{"last_epoch": 4, "base_lrs": [0.001], "_step_count": 5}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"hidden": 8, "lr": 1e-3, "classes": ("cat", "dog")},
    }


def files(model: TinyClassifier) -> dict[str, tuple[Any, dict[str, Any]]]:
    state = model.state_dict()
    return {
        "lightning.ckpt": (lightning_checkpoint(model), {}),
        "training_args.bin": (TrainingArguments(), {}),
        "hf_training_args.bin": (HFTrainingArguments(), {}),
        "trainer_state_with_enum.pt": ({"strategy": IntervalStrategy.STEPS, "step": 10}, {}),
        "numpy_config.pt": (
            {
                "model": state,
                "config": {"mean": np.array([0.485, 0.456, 0.406]), "std": np.array([0.229, 0.224, 0.225])},
                "best_acc": np.float64(0.91),
                "epoch": np.int64(7),
                "class_names": np.array(["cat", "dog"]),
            },
            {},
        ),
        "fairseq_style.pt": ({"args": argparse.Namespace(arch="tiny", lr=[0.1], seed=1), "model": state}, {}),
        "counters.pt": (
            {"model": state, "vocab_counts": collections.defaultdict(int, {"a": 3, "b": 1}), "empty": {}},
            {},
        ),
        "empty_defaultdict.pt": ({"model": state, "stats": collections.defaultdict(list)}, {}),
        "training_checkpoint.pth.tar": (
            {"epoch": 3, "state_dict": state, "optimizer": _optimizer_state(model), "best_prec1": 71.3},
            {},
        ),
        "whole_model.pt": (model, {}),
        "whole_resnet_like.pt": (ResNetLike(), {}),
        # Fabric.save(path, state) with the AttributeDict its docs suggest: modules and
        # optimizers become their state_dicts, the rest is kept as it was.
        "fabric_state.ckpt": ({"model": state, "iter_num": 3, "hparams": AttributeDict(lr=1e-3, layers=[4, 8])}, {}),
        "whole_model_legacy.pt": (model, {"_use_new_zipfile_serialization": False}),
        "paths_in_config.pt": ({"model": state, "output_dir": Path("runs/exp1"), "range": range(3)}, {}),
    }


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    register_library_names()
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy saves warn about source code
        for name, (obj, options) in files(model).items():
            torch.save(obj, out / name, **options)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
