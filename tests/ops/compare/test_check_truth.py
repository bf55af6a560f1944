"""`check --model` and `--like` against PyTorch.

For each way a checkpoint fails to fit a model, the missing and unexpected keys equal
what `model.load_state_dict(sd, strict=False)` returns, and the shape mismatches are
exactly those `load_state_dict` raises "size mismatch" on, and "matched X of Y keys"
counts the file's keys torch neither calls unexpected nor refuses. Every suggested
command is run here and its output loaded with torch: the keys it claims to fix and the
missing and unexpected keys it leaves must be what torch then reports, a fix that
leaves nothing must load with `strict=True`, and a `--keep-structure` fix must keep
every other entry of the file. Keys allowed by `--allow-missing`/`--allow-unexpected`
are exactly torch's missing/unexpected keys that match the globs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torchvision
from click.testing import Result
from support import checkmodels
from support.compare import (
    CHECK_MODELS_FILE,
    TUTORIAL_MODELS_FILE,
    LoadResult,
    dense_zeros_like,
    load_truth,
    output_json,
    renamed,
    save,
    spec,
)
from support.groundtruth import (
    assert_same_content,
    fixture_path,
    fixture_record,
    ground_truth_weights,
    torch_load_trusted,
    tutorial_models,
    weights_at,
)
from torch import nn

Cli = Callable[..., Result]
State = Mapping[str, torch.Tensor]


@dataclass
class Built:
    """A checkpoint written for one case, and where in it the weights are."""

    path: Path
    root: str = ""

    def at(self, root: str) -> State:
        """The state_dict at `root` as `torch.load` returns it (with its `_metadata`)."""
        return cast(State, weights_at(torch_load_trusted(self.path), root))

    @cached_property
    def weights(self) -> State:
        return self.at(self.root)


@dataclass(frozen=True)
class Case:
    name: str
    spec: str
    model: Callable[[], nn.Module]  # the model torch loads into, as the spec builds it
    model_args: tuple[str, ...] = ()
    best_fix: str | None = None  # the option of the suggestion that should come first
    allow: tuple[str, ...] = ()  # --allow-missing / --allow-unexpected options


def seeded(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory()


def cnn(num_classes: int = 10) -> nn.Module:
    model: nn.Module = tutorial_models().CNN(num_classes=num_classes)
    return model


def plain_state(path: Path, model: nn.Module) -> Built:
    return Built(save(model.state_dict(), path))


def dataparallel(tmp: Path) -> Built:
    return plain_state(tmp / "dp.pth", nn.DataParallel(seeded(cnn)))


def dataparallel_other_head(tmp: Path) -> Built:
    return plain_state(tmp / "dp5.pth", nn.DataParallel(seeded(lambda: cnn(num_classes=5))))


def dataparallel_batchnorm(tmp: Path) -> Built:
    """DataParallel over a model with BatchNorm: the state_dict versions are recorded under
    `module.`-prefixed names, so for the plain model torch treats BatchNorm as versionless
    and does not count `num_batches_tracked` as missing."""
    return plain_state(tmp / "dp_bn.pth", nn.DataParallel(seeded(tutorial_models().BatchNormNet)))


def compiled(tmp: Path) -> Built:
    compiled_model = cast(nn.Module, torch.compile(seeded(cnn)))  # an OptimizedModule
    return plain_state(tmp / "compiled.pth", compiled_model)


def compiled_dataparallel_training(tmp: Path) -> Built:
    """torch.compile over DataParallel (`_orig_mod.module.` keys), saved as a training
    checkpoint with its optimizer: the fix must keep the optimizer state."""
    model = seeded(cnn)
    wrapped = cast(nn.Module, torch.compile(nn.DataParallel(model)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    ckpt = {"epoch": 4, "model_state_dict": wrapped.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
    return Built(save(ckpt, tmp / "compiled_dp.pth"), "model_state_dict")


def lightning(tmp: Path) -> Built:
    weights = {f"model.{k}": v for k, v in seeded(cnn).state_dict().items()}
    ckpt = {"epoch": 2, "global_step": 20, "state_dict": weights, "optimizer_states": [], "hyper_parameters": {}}
    return Built(save(ckpt, tmp / "epoch=2-step=20.ckpt"), "state_dict")


def warm_start_source(tmp: Path) -> Built:
    """Model A's weights, for model B (A plus a new head) to start from with strict=False."""
    return plain_state(tmp / "model_a.pth", seeded(cnn))


def half_precision(tmp: Path) -> Built:
    weights = {k: v.half() for k, v in seeded(cnn).state_dict().items()}
    return Built(save(weights, tmp / "half.pth"))


def gan(tmp: Path) -> Built:
    """Two models in one file; the one chosen as the weights is not the one checked."""
    generator = seeded(checkmodels.Generator).state_dict()
    discriminator = seeded(checkmodels.Discriminator).state_dict()
    path = save({"generator": generator, "discriminator": discriminator}, tmp / "gan.pth")
    return Built(path, "generator")


def old_batchnorm(tmp: Path) -> Built:
    """A BatchNorm checkpoint from before `num_batches_tracked` (PyTorch < 0.4.1, the
    original model-zoo files): a plain dict without state_dict versions, so torch fills
    the counter in itself and reports nothing missing."""
    state = seeded(tutorial_models().BatchNormNet).state_dict()
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return Built(save(weights, tmp / "bn_old.pth"))


def scalar_as_vector(tmp: Path) -> Built:
    """A 0-dim parameter saved with shape [1], as PyTorch 0.3 did: torch still loads it."""
    weights = dict(seeded(checkmodels.ScalarScaleNet).state_dict())
    weights["temperature"] = weights["temperature"].reshape(1)
    return Built(save(weights, tmp / "scalar.pth"))


def legacy_weight_norm(tmp: Path) -> Built:
    """Keys written by the old `torch.nn.utils.weight_norm` (vocoders, wav2vec2 heads),
    for a model that uses the parametrization: torch's load hook maps them."""
    weights = {"proj.bias": torch.zeros(4), "proj.weight_g": torch.ones(4, 1), "proj.weight_v": torch.ones(4, 4)}
    return Built(save(weights, tmp / "weight_norm.pth"))


def warm_start_target(tmp: Path) -> Built:
    """Model B's weights (A plus a head) checked against model A: the head is unexpected."""
    return plain_state(tmp / "model_b.pth", seeded(checkmodels.WarmStartCNN))


def plain_cnn(tmp: Path) -> Built:
    return plain_state(tmp / "cnn.pth", seeded(cnn))


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """ImageNet-sized checkpoints, written once: a real 1000-class resnet18, and vgg16's
    keys, shapes and dtypes over one zero each (its 138M parameters would be 550 MB)."""
    folder = tmp_path_factory.mktemp("torchvision")
    resnet = plain_state(folder / "resnet18.pth", seeded(torchvision.models.resnet18))
    with torch.device("meta"):
        vgg = torchvision.models.vgg16()
    vgg_weights = dense_zeros_like(vgg)
    return {"resnet18": resnet, "vgg16": Built(save(vgg_weights, folder / "vgg16.pth"))}


CNN_SPEC = spec(TUTORIAL_MODELS_FILE, "CNN")
BATCHNORM_SPEC = spec(TUTORIAL_MODELS_FILE, "BatchNormNet")

CASES: list[tuple[Case, Callable[[Path], Built]]] = [
    (Case("dataparallel", CNN_SPEC, cnn, best_fix="--strip-prefix module."), dataparallel),
    (Case("dataparallel_other_head", CNN_SPEC, cnn, best_fix="--strip-prefix module."), dataparallel_other_head),
    (
        Case(
            "dataparallel_batchnorm", BATCHNORM_SPEC, tutorial_models().BatchNormNet, best_fix="--strip-prefix module."
        ),
        dataparallel_batchnorm,
    ),
    (Case("torch_compile", CNN_SPEC, cnn, best_fix="--strip-prefix _orig_mod."), compiled),
    (Case("lightning", CNN_SPEC, cnn, best_fix="--strip-prefix model."), lightning),
    (
        Case("compiled_dataparallel", CNN_SPEC, cnn, best_fix="--strip-prefix _orig_mod.module."),
        compiled_dataparallel_training,
    ),
    (Case("warm_start", spec(CHECK_MODELS_FILE, "WarmStartCNN"), checkmodels.WarmStartCNN), warm_start_source),
    (
        Case(
            "warm_start_allowed",
            spec(CHECK_MODELS_FILE, "WarmStartCNN"),
            checkmodels.WarmStartCNN,
            allow=("--allow-missing", "head.*"),
        ),
        warm_start_source,
    ),
    (
        Case("warm_start_reverse_allowed", CNN_SPEC, cnn, allow=("--allow-unexpected", "head.*")),
        warm_start_target,
    ),
    (
        Case("add_prefix", spec(CHECK_MODELS_FILE, "Wrapped"), checkmodels.Wrapped, best_fix="--rename ^=backbone."),
        plain_cnn,
    ),
    (Case("half_precision", CNN_SPEC, cnn), half_precision),
    (
        Case(
            "other_root",
            spec(CHECK_MODELS_FILE, "Discriminator"),
            checkmodels.Discriminator,
            best_fix="--root discriminator",
        ),
        gan,
    ),
    (Case("old_batchnorm", BATCHNORM_SPEC, tutorial_models().BatchNormNet), old_batchnorm),
    (Case("warm_start_reverse", CNN_SPEC, cnn), warm_start_target),
    (
        Case("legacy_weight_norm", spec(CHECK_MODELS_FILE, "WeightNormNet"), checkmodels.WeightNormNet),
        legacy_weight_norm,
    ),
    (Case("scalar_as_vector", spec(CHECK_MODELS_FILE, "ScalarScaleNet"), checkmodels.ScalarScaleNet), scalar_as_vector),
]


def run_check(cli: Cli, path: Path, *options: Any) -> tuple[int, dict[str, Any]]:
    result = cli("check", path, "--format", "json", *options)
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    (report,) = output_json(result)["files"]
    return result.exit_code, report


def assert_agrees_with_load_state_dict(report: dict[str, Any], truth: LoadResult) -> None:
    assert sorted(report["missing"]) == sorted(truth.missing)
    assert sorted(report["unexpected"]) == sorted(truth.unexpected)
    assert len(set(report["missing"])) == len(report["missing"])
    found = {m["key"]: (m["checkpoint"], m["expected"]) for m in report["shape_mismatch"]}
    assert found == truth.size_mismatch


def assert_matched_counts(report: dict[str, Any], truth: LoadResult, weights: State) -> None:
    """ "matched X of Y keys": Y the file's keys, X those torch neither calls unexpected nor refuses."""
    loaded = len(weights) - len(truth.unexpected) - len(truth.size_mismatch)
    assert (report["keys"]["in_file"], report["keys"]["matched"]) == (len(weights), loaded)


def assert_allowed(report: dict[str, Any], truth: LoadResult, allow: tuple[str, ...]) -> None:
    globs = {kind: [g for flag, g in zip(allow[::2], allow[1::2], strict=True) if flag == f"--allow-{kind}"]
             for kind in ("missing", "unexpected")}  # fmt: skip
    for kind, keys in (("missing", truth.missing), ("unexpected", truth.unexpected)):
        assert report[f"allowed_{kind}"] == [k for k in keys if any(fnmatchcase(k, g) for g in globs[kind])]


def assert_findings(report: dict[str, Any], code: int) -> None:
    """One error finding per missing, unexpected and mismatched key not allowed; exit 1 exactly on errors."""
    errors = {(f["key"], f["message"].split(":")[0]) for f in report["findings"] if f["severity"] == "error"}
    missing = set(report["missing"]) - set(report["allowed_missing"])
    unexpected = set(report["unexpected"]) - set(report["allowed_unexpected"])
    assert {k for k, kind in errors if kind == "missing"} == missing
    assert {k for k, kind in errors if kind == "unexpected"} == unexpected
    assert {k for k, kind in errors if kind == "size mismatch"} == {m["key"] for m in report["shape_mismatch"]}
    assert report["ok"] is (not errors)
    assert code == (0 if report["ok"] else 1)


def weights_after(fix: dict[str, Any], built: Built) -> State:
    option = fix["option"]
    if option.startswith("--root "):
        return built.at(option.removeprefix("--root "))
    return renamed(built.weights, option)


def assert_suggestions_hold(report: dict[str, Any], built: Built, model: nn.Module, truth: LoadResult) -> None:
    """Each suggestion, applied and loaded with torch, fixes and leaves what it says."""
    expected = len(model.state_dict())
    for fix in report["suggestions"]:
        after = load_truth(model, weights_after(fix, built))
        assert fix["fixes"] == after.matched(expected) - truth.matched(expected), fix
        assert (fix["missing_after"], fix["unexpected_after"]) == (len(after.missing), len(after.unexpected)), fix
        assert fix["shape_mismatch_after"] == len(after.size_mismatch), fix
    ranks = [(not s["passes"], -s["fixes"]) for s in report["suggestions"]]
    assert ranks == sorted(ranks), "best first"


def run_suggested_command(cli: Cli, fix: dict[str, Any], built: Built, out_dir: Path) -> Any:
    """Run the suggestion's command as pasted (its output moved into `out_dir`); torch.load
    of what it wrote."""
    program, command, src, dst, *options = shlex.split(fix["command"])
    assert (program, command, src) == ("ckpttool", "convert", str(built.path)), fix["command"]
    assert options[-2:] == fix["option"].split(" ", 1)
    target = out_dir / Path(dst).name
    result = cli(command, src, target, *options)
    assert result.exit_code == 0, (fix["command"], result.output)
    return torch_load_trusted(target)


def assert_commands_work(cli: Cli, report: dict[str, Any], built: Built, model: nn.Module, out_dir: Path) -> None:
    """Every suggested command, run: its output loads as the suggestion says, with strict=True
    when nothing is left; a --keep-structure output keeps every other entry of the file."""
    expected = len(model.state_dict())
    before = load_truth(model, built.weights)
    for fix in report["suggestions"]:
        output = run_suggested_command(cli, fix, built, out_dir)
        keep = "--keep-structure" in shlex.split(fix["command"])
        weights = weights_at(output, built.root) if keep else output
        after = load_truth(model, weights)
        assert fix["fixes"] == after.matched(expected) - before.matched(expected), fix
        assert (fix["missing_after"], fix["unexpected_after"]) == (len(after.missing), len(after.unexpected)), fix
        if not (fix["missing_after"] or fix["unexpected_after"] or fix["shape_mismatch_after"]):
            model.load_state_dict(weights, strict=True)
        if keep:
            source = torch_load_trusted(built.path)
            assert list(source) == list(output)
            for key in source:
                if key != built.root:
                    assert_same_content(source[key], output[key], key)


def check_case(cli: Cli, case: Case, built: Built, out_dir: Path) -> None:
    model = seeded(case.model)
    truth = load_truth(model, built.weights)
    options = ["--model", case.spec, *case.allow] + [x for arg in case.model_args for x in ("--model-arg", arg)]
    code, report = run_check(cli, built.path, *options)
    assert_agrees_with_load_state_dict(report, truth)
    assert_matched_counts(report, truth, built.weights)
    assert_allowed(report, truth, case.allow)
    assert_findings(report, code)
    assert_suggestions_hold(report, built, model, truth)
    assert_commands_work(cli, report, built, model, out_dir)
    if case.best_fix is not None:
        assert report["suggestions"], "a fix is suggested"
        assert report["suggestions"][0]["option"] == case.best_fix


@pytest.mark.slow
@pytest.mark.parametrize(("case", "build"), CASES, ids=[c.name for c, _ in CASES])
def test_model_keys_agree_with_load_state_dict(
    cli: Cli, tmp_path: Path, case: Case, build: Callable[[Path], Built]
) -> None:
    check_case(cli, case, build(tmp_path), tmp_path)


@pytest.mark.slow
def test_classifier_with_other_num_classes(cli: Cli, torchvision_files: dict[str, Built], tmp_path: Path) -> None:
    """ImageNet resnet18 weights for a 10-class resnet18: fc.weight and fc.bias mismatch."""
    case = Case(
        "num_classes",
        "torchvision.models:resnet18",
        lambda: torchvision.models.resnet18(num_classes=10),
        ("num_classes=10",),
    )
    check_case(cli, case, torchvision_files["resnet18"], tmp_path)


@pytest.mark.slow
def test_vgg16_weights_for_resnet34(cli: Cli, torchvision_files: dict[str, Built], tmp_path: Path) -> None:
    """Another architecture entirely: every key missing or unexpected, nothing loads, and
    the table says so in its matched line and a few rows per kind."""
    case = Case("vgg16_vs_resnet34", "torchvision.models:resnet34", torchvision.models.resnet34)
    built = torchvision_files["vgg16"]
    check_case(cli, case, built, tmp_path)
    truth = load_truth(seeded(torchvision.models.resnet34), built.weights)
    result = cli("check", built.path, "--model", case.spec)
    head = result.stdout.split("\n\n")[0].splitlines()
    assert head[2] == (
        f"keys:      matched 0 of {len(built.weights)} keys; "
        f"{len(truth.missing)} missing, {len(truth.unexpected)} unexpected"
    )
    rows = result.stdout.split("\n\n")[1].splitlines()[2:]
    assert len(rows) == 12  # 5 missing, a count of the rest; 5 unexpected, a count of the rest
    assert rows[5].split()[2:4] == ["(" + str(len(truth.missing) - 5), "more)"]


@pytest.mark.slow
def test_matching_model_passes(cli: Cli, torchvision_files: dict[str, Built]) -> None:
    code, report = run_check(cli, torchvision_files["resnet18"].path, "--model", "torchvision.models:resnet18")
    assert (code, report["ok"], report["findings"], report["suggestions"]) == (0, True, [], [])


@pytest.mark.slow
def test_wrong_root_with_the_same_keys_suggests_the_other_root(cli: Cli, tmp_path: Path) -> None:
    """A generator and a discriminator saved as `nn.Sequential`s share their keys; only the
    shapes tell the roots apart. Taking the discriminator's root fixes every key."""
    generator = seeded(checkmodels.mlp_generator).state_dict()
    discriminator = seeded(checkmodels.mlp_discriminator).state_dict()
    path = save({"generator": generator, "discriminator": discriminator}, tmp_path / "gan.pth")
    built = Built(path, "generator")
    case = Case(
        "same_keys",
        spec(CHECK_MODELS_FILE, "mlp_discriminator"),
        checkmodels.mlp_discriminator,
        best_fix="--root discriminator",
    )
    check_case(cli, case, built, tmp_path)


def test_whole_pickled_model_against_its_class(cli: Cli) -> None:
    """The weights of a whole pickled model (class absent) are its state_dict: all match;
    the only finding is that torch.load(weights_only=True) needs an allowlist."""
    record = fixture_record("cnn_whole_model_main")
    code, report = run_check(cli, fixture_path(record), "--model", CNN_SPEC)
    truth = load_truth(seeded(cnn), ground_truth_weights(record))
    assert_agrees_with_load_state_dict(report, truth)
    assert (code, report["ok"]) == (0, True)
    assert {(f["check"], f["severity"]) for f in report["findings"]} == {("safety", "warning")}


@pytest.mark.slow
def test_half_precision_is_a_warning_torch_casts(cli: Cli, tmp_path: Path) -> None:
    """load_state_dict copies float16 into float32 parameters: a warning, an error with --strict."""
    built = half_precision(tmp_path)
    code, report = run_check(cli, built.path, "--model", CNN_SPEC)
    assert (code, report["ok"]) == (0, True)
    assert {m["key"]: (m["checkpoint"], m["expected"]) for m in report["dtype_mismatch"]} == {
        k: ("float16", "float32") for k in built.weights
    }
    assert {f["severity"] for f in report["findings"]} == {"warning"}
    code, report = run_check(cli, built.path, "--model", CNN_SPEC, "--strict")
    assert (code, report["ok"]) == (1, False)


# -- --like REF ------------------------------------------------------------------------------------

LIKE_PAIRS = [
    ("safetensors", "cnn_state_dict"),
    ("cnn_whole_model_main", "cnn_state_dict"),
    ("sharded_bin", "neural_network_state_dict"),
    ("dataparallel_state_dict", "cnn_state_dict"),
    ("compiled_state_dict", "cnn_state_dict"),
    ("lightning_checkpoint", "cnn_state_dict"),
    ("nn_state_dict", "cnn_state_dict"),
]


@pytest.mark.parametrize(("name", "reference"), LIKE_PAIRS)
def test_like_reference_agrees_with_keys_shapes_dtypes(cli: Cli, name: str, reference: str) -> None:
    """--like compares with a reference checkpoint the way loading into its model would."""
    mine, theirs = ground_truth_weights(fixture_record(name)), ground_truth_weights(fixture_record(reference))
    code, report = run_check(cli, fixture_path(fixture_record(name)), "--like", fixture_path(fixture_record(reference)))
    assert sorted(report["missing"]) == sorted(k for k in theirs if k not in mine)
    assert sorted(report["unexpected"]) == sorted(k for k in mine if k not in theirs)
    common = [k for k in mine if k in theirs]
    assert {m["key"] for m in report["shape_mismatch"]} == {k for k in common if mine[k].shape != theirs[k].shape}
    expected_ok = not (report["missing"] or report["unexpected"] or report["shape_mismatch"])
    assert report["ok"] is expected_ok and code == (0 if expected_ok else 1)
    prefix = fixture_record(name)["key_prefix"]
    if prefix:
        assert report["suggestions"][0]["option"] == f"--strip-prefix {prefix}"
        assert report["suggestions"][0]["fixes"] == len(theirs)


@pytest.mark.slow
def test_like_fails_on_dtype_alone(cli: Cli, tmp_path: Path) -> None:
    """A reference's dtypes must match exactly (unlike a model, which casts)."""
    built = half_precision(tmp_path)
    reference = plain_cnn(tmp_path)
    code, report = run_check(cli, built.path, "--like", reference.path)
    assert (code, report["ok"]) == (1, False)
    dtype_errors = {f["key"] for f in report["findings"] if f["check"] == "like" and f["severity"] == "error"}
    assert dtype_errors == set(built.weights)


# -- --finite --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_finite_counts_nan_and_inf_as_torch_does(cli: Cli, tmp_path: Path) -> None:
    weights = dict(seeded(cnn).state_dict())
    weights["conv1.weight"].view(-1)[[0, 5, 9]] = float("nan")
    weights["fc1.bias"][[1, 2]] = float("inf")
    weights["fc1.bias"][3] = float("-inf")
    weights["conv2.bias"] = weights["conv2.bias"].half()
    weights["conv2.bias"][0] = float("nan")
    path = save(weights, tmp_path / "diverged.pth")
    code, report = run_check(cli, path, "--finite")
    assert (code, report["ok"]) == (1, False)
    findings = {f["key"]: f for f in report["findings"] if f["check"] == "finite"}
    expected = {
        k: (int(v.isnan().sum()), int(v.isinf().sum())) for k, v in weights.items() if not bool(v.isfinite().all())
    }
    assert set(findings) == set(expected)
    for key, (nan, inf) in expected.items():
        assert findings[key]["severity"] == "error"
        assert f"{nan} NaN" in findings[key]["message"] and f"{inf} Inf" in findings[key]["message"]
    code, report = run_check(cli, plain_cnn(tmp_path).path, "--finite")
    assert (code, report["ok"], report["findings"]) == (0, True, [])


# -- --cpu-only ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_only_against_torchs_storage_locations(cli: Cli) -> None:
    """Every torch-format fixture: a cpu-only error exactly when torch restores a storage
    elsewhere (`map_location` sees the location the file names)."""
    from support.groundtruth import TORCH_FORMATS, load_fixture_index, storage_locations

    for record in load_fixture_index():
        if record["format"] not in TORCH_FORMATS:
            continue
        path = fixture_path(record)
        code, report = run_check(cli, path, "--cpu-only")
        flagged = [f for f in report["findings"] if f["check"] == "cpu-only"]
        elsewhere = storage_locations(path) - {"cpu"}
        assert bool(flagged) == bool(elsewhere), record["name"]
        assert all(f["severity"] == "error" for f in flagged)
        for device in elsewhere:
            assert any(device in f["message"] for f in flagged), (record["name"], device)


def tensors_per_location(path: Path) -> dict[str, int]:
    """How many tensors torch restores to each location (every tensor in the file, by path)."""
    location_of: dict[int, str] = {}

    def record(storage: Any, location: str) -> Any:
        location_of[storage.data_ptr()] = location
        return storage

    counts: dict[str, int] = {}
    pending = [torch_load_trusted(path, map_location=record)]
    while pending:
        node = pending.pop()
        if isinstance(node, torch.Tensor):
            where = location_of[node.untyped_storage().data_ptr()]
            counts[where] = counts.get(where, 0) + 1
        elif isinstance(node, Mapping):
            pending.extend(node.values())
        elif isinstance(node, (list, tuple)):
            pending.extend(node)
    return counts


@pytest.mark.slow
def test_cpu_only_counts_tensors_per_device(cli: Cli) -> None:
    """A GPU run's checkpoint: weights and Adam moments on cuda:0, step counters on cpu."""
    path = fixture_path(fixture_record("cuda0_model_optimizer"))
    counts = tensors_per_location(path)
    code, report = run_check(cli, path, "--cpu-only")
    flagged = [f["message"] for f in report["findings"] if f["check"] == "cpu-only"]
    assert code == 1
    assert sorted(flagged) == sorted(
        f"{n} tensors restore to {where}; fix: ckpttool remap {path} OUT --device cpu"
        for where, n in counts.items()
        if where != "cpu"
    )
