"""The model zoo: one small file per family, each registered for ``AutoModel``."""

from sat.model.official.glm_model import GLMModel
from sat.model.official.gpt2_model import GPT2Model
from sat.model.official.llama_model import LLaMAModel

__all__ = ["GLMModel", "GPT2Model", "LLaMAModel"]
