"""Forward FLOPs per image (cv_jax.analysis.flops) and the report's GFLOPs column."""

import pytest
from test_report import make_run, save_checkpoint

from cv_jax.analysis import flops, report
from cv_jax.config import base_config, mlc, model_section


def one_conv_net(padding: str) -> mlc.ConfigDict:
    """A 3x3 conv of 4 filters (bias, ReLU), flattened into a dense layer of 10 classes."""
    config = base_config()
    config.model = model_section("convnet", layers=f"conv:4:k3:{padding}", fc="",
                                           batch_norm=False, flatten="flatten",
                                           activation="relu")
    return config


# On an 8x8x3 image. valid: 6x6x4 outputs of 27 multiply-adds (2 FLOPs each), a bias add and a
# ReLU per output, then 144 -> 10 dense with its bias: 2*6*6*4*27 + 2*144 + 2*144*10 + 10.
# same: 8x8x4 outputs; per filter and input channel the taps that fall inside the image are
# 36 interior x 9 + 24 edge x 6 + 4 corner x 4 = 484 (padding taps count 0):
# 2*484*3*4 + 2*256 + 2*256*10 + 10.
@pytest.mark.parametrize("padding, expected", [("valid", 10954.0), ("same", 17258.0)])
def test_forward_flops_of_a_one_conv_net_equal_the_hand_count(padding, expected):
    assert flops.forward_flops(one_conv_net(padding), 10, (8, 8, 3)) == expected


def test_flops_follow_the_number_of_classes_and_the_image_size():
    config = one_conv_net("valid")
    assert (flops.forward_flops(config, 11, (8, 8, 3))
            - flops.forward_flops(config, 10, (8, 8, 3))) == 2 * 144 + 1
    # 10x10: 8x8x4 outputs, 256 features
    assert flops.forward_flops(config, 10, (10, 10, 3)) == (
        2 * 8 * 8 * 4 * 27 + 2 * 256 + 2 * 256 * 10 + 10)


def test_the_report_gives_gflops_for_runs_with_a_checkpoint(tmp_path):
    counted = make_run(tmp_path / "counted", accuracy=0.5, model=one_conv_net("valid").model)
    save_checkpoint(counted, tuple(f"c{i}" for i in range(10)))  # 8x8x3 images
    uncounted = make_run(tmp_path / "uncounted", accuracy=0.6, lr=0.2)
    records = [report.load_record(d) for d in (counted, uncounted)]
    assert [r.gflops for r in records] == [10954 / 1e9, None]
    text = report.markdown(records, "t", "c")
    assert "| parameters | GFLOPs/image | status |" in text
    assert "| 1.1e-05 | ok |" in text and "| — | ok |" in text
    groups = report.group_records(records, report.diff_keys(records))
    assert report.gflops_of(groups[0]) == 10954 / 1e9
