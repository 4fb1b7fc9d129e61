"""Models. Importing this package registers every model file with :mod:`refseg.models.base`."""
from refseg.models.base import Batch, ModelOutput, RefSegModel, create_model, list_models, register

__all__ = ["Batch", "ModelOutput", "RefSegModel", "create_model", "list_models", "register"]
