"""Models: a registry (a dict and a decorator) of builders called with the data's shapes, and the
one place a run's network is built (`build`).

    from bigmodel_cli.models import create_model, list_models
    net = create_model("cnn_small", num_classes=10, input_shape=[1, 8, 8], width=32)

Importing this package registers every family (cnn, mlp, text, vision; gan, vae, restoration for the
generative tasks; hf: transformers is imported only when an hf model is built).
"""

from bigmodel_cli.models import cnn, gan, hf, mlp, restoration, text, vae, vision  # noqa: F401  (each registers itself)
from bigmodel_cli.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
