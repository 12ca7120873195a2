"""The stand-in for detectron2._C where detectron2 was built without its compiled ops."""

import subprocess
import sys

import pytest

from resnet_backbones._compat import CompiledOpUnavailable, uses_c_stand_in


def test_stand_in_is_used_without_compiled_ops():
    import detectron2._C as C

    assert uses_c_stand_in()
    assert "stand-in" in (C.__doc__ or "")


def test_all_of_detectron2_imports():
    # These four modules import `_C` at module level and fail without it.
    import detectron2.evaluation.fast_eval_api  # noqa: F401
    import detectron2.layers.deform_conv  # noqa: F401
    import detectron2.layers.roi_align_rotated  # noqa: F401
    import detectron2.layers.rotated_boxes  # noqa: F401
    from detectron2.utils.collect_env import collect_env_info

    assert "stand-in" in collect_env_info()


@pytest.mark.parametrize(
    "op, alternative",
    [
        ("deform_conv_forward", "torchvision.ops.deform_conv2d"),
        ("modulated_deform_conv_forward", "torchvision.ops.deform_conv2d"),
        ("box_iou_rotated", "built from source"),
        ("COCOevalAccumulate", "use_fast_impl=False"),
    ],
)
def test_compiled_op_raises_naming_op_and_alternative(op, alternative):
    from detectron2 import _C

    with pytest.raises(CompiledOpUnavailable) as e:
        getattr(_C, op)(1, 2)
    assert op in str(e.value)
    assert alternative in str(e.value)


def test_real_extension_is_left_alone():
    """Where detectron2._C imports, the stand-in is not installed."""
    code = (
        "import sys, types\n"
        "real = types.ModuleType('detectron2._C')\n"
        "sys.modules['detectron2._C'] = real\n"
        "import resnet_backbones\n"
        "from resnet_backbones import uses_c_stand_in\n"
        "assert sys.modules['detectron2._C'] is real\n"
        "assert not uses_c_stand_in()\n"
        "print('left alone')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "left alone" in out.stdout


def test_pillow_10_gets_the_linear_alias_detectron2_imports_with():
    import types

    from PIL import Image

    from resnet_backbones._compat import install_pillow_aliases

    pillow_10 = types.SimpleNamespace(BILINEAR=Image.BILINEAR)  # no LINEAR, as Pillow >= 10
    install_pillow_aliases(pillow_10)
    assert pillow_10.LINEAR == Image.BILINEAR
    older = types.SimpleNamespace(BILINEAR=2, LINEAR="pillow's own")
    install_pillow_aliases(older)
    assert older.LINEAR == "pillow's own"
