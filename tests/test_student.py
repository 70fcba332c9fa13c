"""The student: the teacher's interface and w space, width, weights taken from the teacher, save/load."""

import pytest
import torch

from editkit import checkpoints
from editkit.cameras import frontal_label, make_label
from editkit.models.eg3d import EG3DError
from editkit.models.student import Student


@pytest.fixture(scope="module")
def teacher(tiny_eg3d):
    return tiny_eg3d["G_ema"]


def latents(G, n=2, seed=0):
    return torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))


def test_student_has_the_teachers_interface_and_w_space(teacher):
    S = Student.from_teacher(teacher).eval()
    for name in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "num_ws"):
        assert getattr(S, name) == getattr(teacher, name)
    assert torch.equal(S.w_avg, teacher.w_avg)
    z, c = latents(teacher), frontal_label().expand(2, -1)
    with torch.no_grad():
        ws = teacher.mapping(z, c, truncation_psi=0.7)
        assert torch.equal(S.mapping(z, c, truncation_psi=0.7), ws)
        image = S.synthesis(ws, make_label([-20.0, 20.0], 0.0))["image"]  # a teacher W+ latent feeds the student
        assert image.shape == (2, 3, teacher.img_resolution, teacher.img_resolution)
        assert torch.isfinite(image).all()
        assert torch.equal(S(z, c, truncation_psi=0.7)["image"], S.synthesis(ws, c)["image"])


def test_wrong_shapes_are_clear_errors(teacher):
    S = Student.from_teacher(teacher)
    ws = torch.zeros(1, teacher.num_ws, teacher.w_dim)
    with pytest.raises(EG3DError, match=r"ws must have shape \(N, 14, 512\)"):
        S.synthesis(ws[:, :3], frontal_label())
    with pytest.raises(EG3DError, match=r"c \(camera label\) must have shape \(1, 25\)"):
        S.synthesis(ws, torch.zeros(1, 16))
    with pytest.raises(EG3DError, match="width must be at least"):
        Student.from_teacher(teacher, width=0.01)


def test_width_thins_the_high_resolution_layers(teacher):
    # 32 * width channels at 128 px, doubling per halving of resolution up to 128 (the teacher has only 16)
    assert Student.from_teacher(teacher, width=1).channels() == {4: 128, 8: 128, 16: 128, 32: 128, 64: 64, 128: 32}
    assert Student.from_teacher(teacher, width=0.25).channels() == {4: 128, 8: 128, 16: 64, 32: 32, 64: 16, 128: 8}
    narrow = Student.from_teacher(teacher, width=0.125, channel_max=16).channels()
    assert narrow == {4: 16, 8: 16, 16: 16, 32: 16, 64: 8, 128: 4}


def test_weights_are_copied_from_the_teacher_where_they_fit(teacher):
    # the teacher's backbone has 16 channels up to 64 px; this student has 8 at 64 px and 4 at 128 px
    S = Student.from_teacher(teacher, width=0.125, channel_max=16)
    theirs = teacher.backbone.synthesis
    copied = S.copy_backbone_layers(theirs)
    assert copied == ["b4.const", "b4.conv1"] + [f"b{r}.conv{i}" for r in (8, 16, 32) for i in (0, 1)]
    assert torch.equal(S.synthesis_network.b32.conv1.weight, theirs.b32.conv1.weight)
    assert torch.equal(S.synthesis_network.b32.conv1.affine.weight, theirs.b32.conv1.affine.weight)
    fresh = Student.from_teacher(teacher, width=0.125, channel_max=16, copy_weights=False)
    assert not torch.equal(fresh.mapping_network.fc0.weight, teacher.backbone.mapping.fc0.weight)
    assert not torch.equal(fresh.synthesis_network.b32.conv1.weight, theirs.b32.conv1.weight)


def test_a_new_student_starts_pose_independent_and_learns_pose_through_the_encoder(teacher):
    S = Student.from_teacher(teacher).eval()
    ws = torch.randn(1, teacher.num_ws, teacher.w_dim, generator=torch.Generator().manual_seed(1)).expand(2, -1, -1)
    labels = make_label([-30.0, 30.0], 0.0)
    with torch.no_grad():
        left, right = S.synthesis(ws, labels)["image"]
        assert torch.equal(left, right)
        S.pose_encoder.head.weight.normal_()
        left, right = S.synthesis(ws, labels)["image"]
        assert not torch.allclose(left, right)


def test_save_and_load_round_trip(teacher, tmp_path):
    S = Student.from_teacher(teacher, width=0.25).eval()
    with torch.no_grad():
        S.pose_encoder.head.weight.normal_()
    path = checkpoints.save_model(tmp_path / "student.safetensors", {"G_ema": S}, {"data": "test"})
    loaded = checkpoints.load_generator(path)
    assert isinstance(loaded, Student) and loaded.init_kwargs == S.init_kwargs
    z, c = latents(teacher), make_label([-10.0, 25.0], [5.0, 0.0])
    with torch.no_grad():
        assert torch.equal(loaded(z, c)["image"], S(z, c)["image"])
