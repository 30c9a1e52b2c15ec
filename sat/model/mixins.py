"""Mixins users add to models. Re-exports ``BaseMixin``; finetuning and generation mixins are
exported here as they are added to the package."""

from sat.model.base_model import BaseMixin

__all__ = ["BaseMixin"]
