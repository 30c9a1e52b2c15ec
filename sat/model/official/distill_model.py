"""``DistillModel``: a teacher and a student run side by side for knowledge distillation.

``forward(teacher_kwargs, student_kwargs)`` returns ``(teacher_logits, student_logits)``; the
loss is the training script's. ``disable_untrainable_params`` freezes the teacher.

Saved with ``save_checkpoint`` a checkpoint holds both (``teacher.*``, ``student.*``) and a
``model_config.json`` of ``model_class: DistillModel`` with the arguments given, among them
``--teacher`` (the teacher's checkpoint) and ``--st-type`` (the student's). As in the original,
``DistillModel.from_pretrained(args, teacher_cls, student_name, student_cls)`` loads the student
from ``student_name``'s ``student.*`` weights and the teacher from ``args.teacher``. Unlike the
original, ``AutoModel.from_pretrained`` builds the whole model again: each part's class and
sizes from the ``model_config.json`` of ``--teacher`` and ``--st-type``, the weights from the
distillation checkpoint.
"""

from __future__ import annotations

import argparse

import torch

from sat.arguments import update_args_with_file
from sat.checkpoint import model_config_path
from sat.model.composite import CompositeModel
from sat.model.pretrained import resolve_checkpoint_dir
from sat.model.registry import model_registry


def build_part(name: str, **kwargs) -> torch.nn.Module:
    """An unloaded model of the class and arguments that checkpoint ``name`` records."""
    path = model_config_path(resolve_checkpoint_dir(name, None, None))
    args = update_args_with_file(argparse.Namespace(), path)
    model_cls = model_registry.get(args.model_class)  # the zoo, this module's package, is imported
    args = update_args_with_file(model_cls.get_args(), path)  # its defaults under the recorded values
    return model_cls(args, **kwargs)


class DistillModel(CompositeModel):
    """``DistillModel(teacher, student)``; ``DistillModel(args)`` builds both from the
    checkpoints ``args.teacher`` and ``args.st_type`` name (what ``AutoModel`` does)."""

    parts = ("teacher", "student")

    def __init__(self, teacher, student: torch.nn.Module | None = None, **kwargs):
        super().__init__()
        if isinstance(teacher, argparse.Namespace):
            args = teacher
            if not (args.teacher and args.st_type):
                raise ValueError("DistillModel(args) needs --teacher and --st-type naming the parts' checkpoints")
            teacher, student = build_part(args.teacher, **kwargs), build_part(args.st_type, **kwargs)
        if student is None:
            raise TypeError("DistillModel needs a teacher and a student")
        self.teacher = teacher
        self.student = student

    def forward(self, teacher_kwargs: dict, student_kwargs: dict):
        teacher_logits, *_ = self.teacher(**teacher_kwargs)
        student_logits, *_ = self.student(**student_kwargs)
        return teacher_logits, student_logits

    def disable_untrainable_params(self) -> None:
        """Freeze the teacher (and what the student freezes itself)."""
        self.teacher.requires_grad_(False)
        self.student.disable_untrainable_params()

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("BERT-distill", "BERT distill Configurations")
        group.add_argument("--teacher", type=str, default=None, help="the teacher's checkpoint")
        group.add_argument("--tc-type", type=str, default=None, help="the teacher's model name")
        group.add_argument("--st-type", type=str, default=None, help="the student's checkpoint or model name")
        return parser

    @classmethod
    def from_pretrained(cls, args, teacher_cls, student_name: str, student_cls):
        """The original's loading: the student from ``student_name`` (its ``student.*``
        weights), the teacher from ``args.teacher`` with ``teacher_cls`` (or ``teacher_cls``
        itself when it is a model). Returns ``(model, args)``, ``args`` the student's."""
        student, args = student_cls.from_pretrained(student_name, args, prefix="student.")
        if isinstance(teacher_cls, type):
            teacher, _ = teacher_cls.from_pretrained(args.teacher, args)
        else:
            teacher = teacher_cls
        return cls(teacher, student), args
