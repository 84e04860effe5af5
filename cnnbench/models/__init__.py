"""The model zoo. Importing this package registers every model family."""
from . import (  # noqa: F401  (registration)
    alexnet,
    densenet,
    design_space,
    googlenet,
    lenet,
    nin,
    regnet,
    resnet,
    vgg,
)
from .registry import (
    ModelError,
    ModelSpec,
    create_model,
    get_spec,
    list_models,
    min_input_size,
)

__all__ = ["ModelError", "ModelSpec", "create_model", "get_spec", "list_models", "min_input_size"]
