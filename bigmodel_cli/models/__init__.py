"""Models: a registry (a dict and a decorator) of builders called with the data's shapes.

    from bigmodel_cli.models import create_model, list_models
    net = create_model("cnn_small", num_classes=10, input_shape=[1, 8, 8], width=32)
"""

from bigmodel_cli.models.registry import build_from_recipe, create_model, list_models, register_model

__all__ = ["build_from_recipe", "create_model", "list_models", "register_model"]
