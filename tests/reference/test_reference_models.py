"""The registry builds the tutorial architectures with the tutorials' state_dict keys."""

from __future__ import annotations

import pytest
import torch

from ckpttool.errors import UsageError
from ckpttool.reference.choices import MODEL_NAMES
from ckpttool.reference.models import MODEL_SPECS, get_model_spec, module_classes

SMALL_MODELS = ("nn", "cnn", "neural-network", "cifar10-net")


def test_registry_covers_exactly_the_cli_choices() -> None:
    assert tuple(MODEL_SPECS) == MODEL_NAMES


def test_unknown_model_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="choose one of nn, cnn"):
        get_model_spec("lenet")


def shapes(name: str) -> dict[str, list[int]]:
    model = get_model_spec(name).create()
    return {key: list(tensor.shape) for key, tensor in model.state_dict().items()}


def test_nn_is_one_hidden_layer_of_50() -> None:
    assert shapes("nn") == {
        "fc1.weight": [50, 784],
        "fc1.bias": [50],
        "fc2.weight": [10, 50],
        "fc2.bias": [10],
    }


def test_cnn_is_conv8_pool_conv16_pool_linear() -> None:
    assert shapes("cnn") == {
        "conv1.weight": [8, 1, 3, 3],
        "conv1.bias": [8],
        "conv2.weight": [16, 8, 3, 3],
        "conv2.bias": [16],
        "fc1.weight": [10, 784],
        "fc1.bias": [10],
    }


def test_neural_network_is_flatten_512_512_10() -> None:
    assert shapes("neural-network") == {
        "linear_relu_stack.0.weight": [512, 784],
        "linear_relu_stack.0.bias": [512],
        "linear_relu_stack.2.weight": [512, 512],
        "linear_relu_stack.2.bias": [512],
        "linear_relu_stack.4.weight": [10, 512],
        "linear_relu_stack.4.bias": [10],
    }


def test_cifar10_net_is_three_5x5_convs_then_64_and_10() -> None:
    weights = {key: shape for key, shape in shapes("cifar10-net").items() if key.endswith("weight")}
    assert weights == {
        "model1.0.weight": [32, 3, 5, 5],
        "model1.2.weight": [32, 32, 5, 5],
        "model1.4.weight": [64, 32, 5, 5],
        "model1.7.weight": [64, 1024],
        "model1.8.weight": [10, 64],
    }


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_models_give_ten_logits_for_their_input(name: str) -> None:
    spec = get_model_spec(name)
    logits = spec.create()(torch.zeros(2, *spec.input_shape))
    assert logits.shape == (2, 10)


@pytest.mark.slow
def test_torchvision_models_are_untrained_with_ten_classes() -> None:
    for name, classifier_key in (("vgg16", "classifier.6.weight"), ("resnet34", "fc.weight")):
        spec = get_model_spec(name)
        assert spec.kwargs == {"weights": None, "num_classes": 10}
        assert spec.input_shape == (3, 32, 32)
        assert spec.constructor_path == f"torchvision.models.{name}"
        if name == "resnet34":  # vgg16 takes seconds to build; resnet34 shows the pattern
            assert spec.create().state_dict()[classifier_key].shape == (10, 512)


def test_module_classes_lists_every_class_in_the_tree() -> None:
    names = {cls.__name__ for cls in module_classes(get_model_spec("neural-network").create())}
    assert names == {"NeuralNetwork", "Flatten", "Sequential", "Linear", "ReLU"}
