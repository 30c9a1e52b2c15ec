"""DistillModel: a frozen teacher and a student side by side; what saving and loading keep."""

from __future__ import annotations

import os

import pytest
import torch

from sat.model import AutoModel
from sat.model.official import BertModel, DistillModel
from sat.training.model_io import save_checkpoint

IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(10).expand(2, 10)
KWARGS = dict(input_ids=IDS, position_ids=POSITIONS, attention_mask=None)


def bert(tmp_path, name: str, num_layers: int, hidden_size: int) -> tuple[BertModel, object]:
    """A tiny BertModel, saved under ``tmp_path/name``."""
    args = BertModel.get_args(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=4,
        vocab_size=100,
        max_sequence_length=16,
        layernorm_order="post",
        hidden_dropout=0.0,
        attention_dropout=0.0,
        save=str(tmp_path / name),
    )
    model = BertModel(args)
    save_checkpoint(1, model, None, None, args)
    return model, args


def distill_forward(model):
    return model(KWARGS, KWARGS)


def test_forward_backward_trains_the_student_only(tmp_path):
    teacher, _ = bert(tmp_path, "teacher", 2, 32)
    student, _ = bert(tmp_path, "student", 1, 16)
    model = DistillModel(teacher, student)
    model.disable_untrainable_params()
    teacher_logits, student_logits = distill_forward(model)
    assert teacher_logits.shape == student_logits.shape == (2, 10, 100)
    torch.nn.functional.mse_loss(student_logits, teacher_logits).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.student.parameters())
    with torch.no_grad():
        assert torch.equal(teacher_logits, teacher(**KWARGS)[0])


def test_save_holds_both_parts_and_loads_both_ways(tmp_path):
    teacher, _ = bert(tmp_path, "teacher", 2, 32)
    student, args = bert(tmp_path, "student", 1, 16)
    model = DistillModel(teacher, student).eval()
    with torch.no_grad():
        teacher_as_saved = teacher(**KWARGS)[0]
        for p in model.parameters():
            p.add_(0.01)  # trained weights, different from the parts' own checkpoints
        expected = distill_forward(model)
    args.teacher, args.st_type, args.save = str(tmp_path / "teacher"), str(tmp_path / "student"), str(tmp_path / "d")
    save_checkpoint(1, model, None, None, args)
    saved = torch.load(os.path.join(args.save, "1", "mp_rank_00_model_states.pt"), weights_only=True)["module"]
    assert {key.split(".")[0] for key in saved} == {"teacher", "student"}

    loaded, _ = AutoModel.from_pretrained(args.save)  # both parts rebuilt, both parts' weights
    assert type(loaded) is DistillModel
    with torch.no_grad():
        got = distill_forward(loaded.eval())
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])

    # The original's way: the student's trained weights, the teacher from --teacher.
    loaded, loaded_args = DistillModel.from_pretrained(args, BertModel, args.save, BertModel)
    assert loaded_args.hidden_size == 16
    with torch.no_grad():
        assert torch.equal(loaded.eval().student(**KWARGS)[0], expected[1])
        assert torch.equal(loaded.eval().teacher(**KWARGS)[0], teacher_as_saved)


def test_building_from_arguments_needs_the_parts():
    with pytest.raises(ValueError, match="needs --teacher and --st-type"):
        DistillModel(DistillModel.get_args())
