"""The model zoo: one small file per family, each registered for ``AutoModel``."""

from sat.model.official.gpt2_model import GPT2Model

__all__ = ["GPT2Model"]
