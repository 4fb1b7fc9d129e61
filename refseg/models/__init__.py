"""Models. Importing this package registers every model file with :mod:`refseg.models.base`."""
from refseg.models.base import (
    Batch, ModelOutput, RefSegModel, build_model, create_model, list_models, model_class, register,
)
from refseg.models import baselines  # noqa: F401  (each import registers models)
from refseg.models import instance_ref  # noqa: F401
from refseg.models import lstm_cnn  # noqa: F401
from refseg.models import lstm_cnn_plus  # noqa: F401
from refseg.models import rmi  # noqa: F401
from refseg.models import rmi_baseline  # noqa: F401
from refseg.models import step  # noqa: F401

__all__ = ["Batch", "ModelOutput", "RefSegModel", "build_model", "create_model", "list_models", "model_class", "register"]
