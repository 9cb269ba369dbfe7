import pytest
import torch

from lungct.config import HeadConfig, ModelConfig
from lungct.data.images import load_image
from lungct.data.transforms import prepare_image
from lungct.errors import LungCTError
from lungct.models import BACKBONES, CTClassifier, build_classifier, create_backbone, get_spec
from tests.conftest import MOBILENET_WEIGHTS, SHARED

REQUIRED = {
    "mobilenetv2_100",
    "densenet121",
    "resnet50",
    "resnet101",
    "inception_v3",
    "inception_resnet_v2",
    "vgg16",
    "vgg19",
    "xception",
    "mnasnet_100",
    "mobilenetv3_large_100",
    "small_cnn",
}


def test_registry_holds_every_required_backbone():
    assert set(BACKBONES) >= REQUIRED
    for name, spec in BACKBONES.items():
        if spec.builder is None:
            spec.resolve_timm_name()  # exists in the installed timm
        assert spec.cam_layer, name


def test_unknown_backbone_lists_choices():
    with pytest.raises(LungCTError, match="choose one of"):
        get_spec("resnet5000")


@pytest.mark.parametrize("arch", ["small_cnn", "mnasnet_100", "resnet50", "inception_v3"])
def test_backbone_plus_head_gives_class_logits(arch):
    model, backbone = build_classifier(ModelConfig(arch=arch, head=HeadConfig(hidden=[16])), num_classes=3)
    size = 64 if arch != "inception_v3" else 96
    assert backbone.pretrained is False
    out = model.eval()(torch.zeros(2, 3, size, size))
    assert out.shape == (2, 3)
    assert backbone.preprocess.input_size == (299 if arch == "inception_v3" else 224)


def test_timm_preprocessing_used_without_weights_metadata():
    b = create_backbone("resnet50", None)
    assert b.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.realdata
@pytest.mark.skipif(not MOBILENET_WEIGHTS.is_file(), reason="shared weights not present")
def test_shared_mobilenet_weights_say_egyptian_cat():
    b = create_backbone("mobilenetv2_100", str(MOBILENET_WEIGHTS), num_classes=1000, color="rgb")
    assert b.pretrained
    assert b.preprocess.mean == (0.5, 0.5, 0.5) and b.preprocess.std == (0.5, 0.5, 0.5)  # from the file
    x = prepare_image(load_image(SHARED / "weights" / "cat.jpg", "rgb"), b.preprocess)
    with torch.inference_mode():
        probs = b.module.eval()(x[None]).softmax(1)[0]
    names = (SHARED / "weights" / "imagenet_labels.txt").read_text().splitlines()
    top = probs.topk(2)
    assert names[int(top.indices[0])] == "Egyptian cat"
    assert 0.6 < float(top.values[0]) < 0.9
    assert names[int(top.indices[1])] == "tabby, tabby cat"


@pytest.mark.realdata
@pytest.mark.skipif(not MOBILENET_WEIGHTS.is_file(), reason="shared weights not present")
def test_weights_for_another_arch_are_refused():
    with pytest.raises(LungCTError, match="is for 'mobilenetv2_100'"):
        create_backbone("resnet50", str(MOBILENET_WEIGHTS))


def test_missing_or_corrupt_weights_file(tmp_path):
    with pytest.raises(LungCTError, match="not found"):
        create_backbone("mobilenetv2_100", str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(LungCTError):
        create_backbone("mobilenetv2_100", str(bad))


def test_head_is_replaceable():
    backbone = create_backbone("small_cnn", None).module
    model = CTClassifier(backbone, 4, HeadConfig(dropout=0.5, hidden=[32, 16]))
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [32, 16, 4]


@pytest.mark.parametrize("arch", ["vgg16", "mobilenetv3_large_100"])
def test_backbones_with_a_pre_logits_stage_size_the_head_right(arch):
    model, _ = build_classifier(ModelConfig(arch=arch), num_classes=2)
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_model_crop_pct_replaces_the_backbones_centre_crop():
    own = build_classifier(ModelConfig(arch="mobilenetv2_100"), num_classes=3)[1].preprocess
    whole = build_classifier(ModelConfig(arch="mobilenetv2_100", crop_pct=1.0), num_classes=3)[1].preprocess
    assert own.crop_pct == pytest.approx(0.875) and own.resize_to == 256  # timm's ImageNet recipe
    assert whole.crop_pct == 1.0 and whole.resize_to == 224  # the whole slice, resized to the input
    for bad in (0.3, 1.2):
        with pytest.raises(ValueError, match="crop_pct"):
            ModelConfig(arch="mobilenetv2_100", crop_pct=bad)


def test_model_interpolation_replaces_the_backbones_resize_filter():
    import numpy as np
    from PIL import Image

    own = build_classifier(ModelConfig(arch="mobilenetv2_100", crop_pct=1.0), num_classes=3)[1].preprocess
    chosen = build_classifier(
        ModelConfig(arch="mobilenetv2_100", crop_pct=1.0, interpolation="bilinear"), num_classes=3
    )[1].preprocess
    assert own.interpolation == "bicubic" and chosen.interpolation == "bilinear"
    slice_ = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8))
    for pre, pil_filter in ((own, Image.Resampling.BICUBIC), (chosen, Image.Resampling.BILINEAR)):
        expected = np.asarray(slice_.resize((224, 224), pil_filter))
        assert np.array_equal(np.asarray(pre.resized_crop(slice_)), expected)
    with pytest.raises(ValueError, match="interpolation"):
        ModelConfig(arch="mobilenetv2_100", interpolation="lanczos")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is not a PyTorch (.pt, .pth, .bin) or .safetensors weights file"),  # was an EOFError: "interrupted"
        (b"hello, I am text\n", "is not a PyTorch (.pt, .pth, .bin) or .safetensors weights file"),  # was ": 101"
        (b"\x80\x02]q\x00(K\x00K\x01", "is damaged or truncated (EOFError)"),  # a pickle cut short
    ],
    ids=["empty", "text", "truncated-pickle"],
)
def test_a_weights_file_that_is_no_weights_is_one_clear_error(tmp_path, tiny_dataset, capsys, content, needle):
    from lungct.cli import main

    weights = tmp_path / "weights.pth"
    weights.write_bytes(content)
    with pytest.raises(LungCTError, match="weights file") as caught:
        create_backbone("mobilenetv2_100", str(weights))
    assert f"weights file {weights} {needle}" == str(caught.value)
    code = main(["train", "--out", str(tmp_path / "r"), "--data", str(tiny_dataset), "--weights", str(weights), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err == f"lungct: error: {caught.value}\n", err


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_of_another_network_are_refused_not_loaded_as_nothing(tmp_path, fake_pretrained, suffix):
    import torch
    from safetensors.torch import save_file

    foreign = {"foo.weight": torch.zeros(3, 3), "features.0.weight": torch.zeros(8, 3, 3, 3)}
    weights = tmp_path / f"foreign{suffix}"
    if suffix == ".pth":
        torch.save(foreign, weights)
    else:
        save_file(foreign, str(weights))
    with pytest.raises(LungCTError, match=r"does not fit mobilenetv2_100: it sets 0 of the network's \d+ tensors"):
        create_backbone("mobilenetv2_100", str(weights))
    # a file of the network's own names and shapes loads, and its values are the model's
    backbone = create_backbone("mobilenetv2_100", str(fake_pretrained))
    from safetensors.torch import load_file

    expected = load_file(str(fake_pretrained))["conv_stem.weight"]
    assert backbone.pretrained and torch.equal(backbone.module.state_dict()["conv_stem.weight"], expected)
