"""The model zoo: one small file per family, each registered for ``AutoModel``."""

from sat.model.official.bert_model import BertModel
from sat.model.official.cait_model import CaiT, CaiTDecoder, CaiTEncoder
from sat.model.official.chatglm2_model import ChatGLM2Model
from sat.model.official.chatglm3_model import ChatGLM3Model
from sat.model.official.chatglm4_model import ChatGLM4Model
from sat.model.official.chatglm_model import ChatGLMModel
from sat.model.official.clip_model import CLIP
from sat.model.official.cuda2d_model import Cuda2dModel
from sat.model.official.deit_model import DeiTModel
from sat.model.official.distill_model import DistillModel
from sat.model.official.dpr_model import DPRContextEncoder, DPRQuestionEncoder, DPRReader
from sat.model.official.eva2_model import EVA2Model
from sat.model.official.eva_clip_model import EVA2CLIPModel
from sat.model.official.glm4v_model import GLM4VModel
from sat.model.official.glm130B_model import GLM130B
from sat.model.official.glm_model import GLMModel
from sat.model.official.gpt2_model import GPT2Model
from sat.model.official.gptj_model import GPTJModel
from sat.model.official.gptneo_model import GPTNeoModel
from sat.model.official.llama_model import LLaMAModel
from sat.model.official.mae_model import MAE
from sat.model.official.mistral_model import MistralModel
from sat.model.official.mixtral_model import MixtralModel
from sat.model.official.qwen2_model import Qwen2Model
from sat.model.official.roberta_model import RobertaModel
from sat.model.official.t5_model import T5Model
from sat.model.official.vit_model import ViTModel
from sat.model.official.yolos_model import YOLOS

__all__ = [
    "BertModel",
    "CLIP",
    "CaiT",
    "CaiTDecoder",
    "CaiTEncoder",
    "ChatGLM2Model",
    "ChatGLM3Model",
    "ChatGLM4Model",
    "ChatGLMModel",
    "Cuda2dModel",
    "DPRContextEncoder",
    "DPRQuestionEncoder",
    "DPRReader",
    "DeiTModel",
    "DistillModel",
    "EVA2CLIPModel",
    "EVA2Model",
    "GLM130B",
    "GLM4VModel",
    "GLMModel",
    "GPT2Model",
    "GPTJModel",
    "GPTNeoModel",
    "LLaMAModel",
    "MAE",
    "MistralModel",
    "MixtralModel",
    "Qwen2Model",
    "RobertaModel",
    "T5Model",
    "ViTModel",
    "YOLOS",
]
