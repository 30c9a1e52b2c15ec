"""The model zoo: one small file per family, each registered for ``AutoModel``."""

from sat.model.official.gpt2_model import GPT2Model
from sat.model.official.t5_model import T5Model

__all__ = ["GPT2Model", "T5Model"]
