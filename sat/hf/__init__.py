"""HuggingFace ``transformers`` interop in both directions.

``from_hf(source)`` builds the sat model of an HF directory or in-memory model; ``to_hf(model)``
and ``save_hf(model, directory)`` go the other way. One declarative state-dict map per family
(``sat/hf/families/``), dispatched by the HF config's ``model_type``.
"""

from sat.checkpoint import is_hf_directory
from sat.hf.convert import (
    from_hf,
    hf_to_sat_state_dict,
    read_hf_weights,
    sat_to_hf_state_dict,
    save_hf,
    to_hf,
)
from sat.hf.family import Family, families, register_family
from sat.hf.mapping import MappingError

__all__ = [
    "Family",
    "MappingError",
    "families",
    "from_hf",
    "hf_to_sat_state_dict",
    "is_hf_directory",
    "read_hf_weights",
    "register_family",
    "sat_to_hf_state_dict",
    "save_hf",
    "to_hf",
]
