"""The model zoo: one small file per family, each registered for ``AutoModel``."""

from sat.model.official.bert_model import BertModel
from sat.model.official.gpt2_model import GPT2Model
from sat.model.official.roberta_model import RobertaModel
from sat.model.official.vit_model import ViTModel

__all__ = ["BertModel", "GPT2Model", "RobertaModel", "ViTModel"]
