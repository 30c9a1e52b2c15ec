"""Names ``from_pretrained`` can download, and where from (the original library's table).

``r2://`` entries live in a private object store that needs credentials; they cannot be
downloaded anonymously (see ``sat.resources.download``).
"""

from __future__ import annotations

from sat.helpers import print_columns

MODEL_URLS: dict[str, str] = {
    "bert-base-uncased": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fbert-base-uncased.zip&dl=1",
    "bert-large-uncased": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fbert-large-uncased.zip&dl=1",
    "roberta-base": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Froberta-base.zip&dl=1",
    "roberta-large": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Froberta-large.zip&dl=1",
    "vit-base-patch16-224-in21k": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fvit-base-patch16-224-in21k.zip&dl=1",
    "deit-tiny": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fdeit-tiny.zip&dl=1",
    "deit-small": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fdeit-small.zip&dl=1",
    "deit-base": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fdeit-base.zip&dl=1",
    "cait-s24-224": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fcait-s24-224.zip&dl=1",
    "gpt2": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fgpt2.zip&dl=1",
    "chatglm-6b": "r2://chatglm-6b.zip",
    "chatglm2-6b": "r2://chatglm2-6b.zip",
    "chatglm3-6b": "r2://chatglm3-6b.zip",
    "chatglm3-6b-base": "r2://chatglm3-6b-base.zip",
    "chatglm3-6b-32k": "r2://chatglm3-6b-32k.zip",
    "glm4v-9b-chat": "r2://glm4v-9b-chat.zip",
    "eva02_L_pt_m38m_p14": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Feva02_L_pt_m38m_p14.zip&dl=1",
    "llama-7b": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fllama-7b.zip&dl=1",
    "llama-13b": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fllama-13b.zip&dl=1",
    "llama-30b": "r2://llama-30b",
    "llama-65b": "r2://llama-65b",
    "clip": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fclip.zip&dl=1",
    "clip-vit-base-patch16": "https://lfs.aminer.cn/misc/clip/clip-vit-base-patch16.zip",
    "clip-vit-large-patch14": "https://lfs.aminer.cn/misc/clip/clip-vit-large-patch14.zip",
    "eva-clip-4b-14-x-drop-last-layer": "r2://eva-clip-4b-14-x-drop-last-layer.zip",
    "yolos-tiny": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fyolos-tiny.zip&dl=1",
    "mae-vit-base": "https://cloud.tsinghua.edu.cn/d/dd80f9d39d454bc29ce4/files/?p=%2Fmae-vit-base.zip&dl=1",
    "cogview-base": "https://cloud.tsinghua.edu.cn/f/df21f6d4109b4285bfd9/?dl=1",
    "glm-large-zh": "https://lfs.aminer.cn/misc/cogview/glm/glm-large-zh.zip",
    "glm-large-en-blank": "https://lfs.aminer.cn/misc/cogview/glm/glm-large-en-blank.zip",
    "glm-10b-en": "https://lfs.aminer.cn/misc/cogview/glm/glm-10b-en.zip",
    "glm-10b-zh": "https://lfs.aminer.cn/misc/cogview/glm/glm-10b-zh.zip",
    "gpt-neo-1.3b": "https://cloud.tsinghua.edu.cn/f/22e87976b5b745ad90af/?dl=1",
    "coglm": "https://lfs.aminer.cn/misc/cogview/cogview2/coglm.zip",
    "cogview2-dsr": "https://lfs.aminer.cn/misc/cogview/cogview2/cogview2-dsr.zip",
    "cogview2-itersr": "https://lfs.aminer.cn/misc/cogview/cogview2/cogview2-itersr.zip",
    "cogvideo-stage1": "https://lfs.aminer.cn/misc/cogvideo/cogvideo-stage1.zip",
    "cogvideo-stage2": "https://lfs.aminer.cn/misc/cogvideo/cogvideo-stage2.zip",
    "dpr-ctx_encoder-single-nq-base": "https://cloud.tsinghua.edu.cn/f/e5475f1211a948708baa/?dl=1",
    "dpr-question_encoder-single-nq-base": "https://cloud.tsinghua.edu.cn/f/5c4aae7d11fc4c45a5bd/?dl=1",
    "dpr-reader-single-nq-base": "https://cloud.tsinghua.edu.cn/f/e169889ab40d4615a34d/?dl=1",
}


def list_avail_pretrained() -> list[str]:
    """Print and return the names ``from_pretrained`` can download (``MODEL_URLS``)."""
    names = list(MODEL_URLS)
    print('Available pretrained models (example: sat.AutoModel.from_pretrained("roberta-base")):')
    print_columns(names)
    return names
