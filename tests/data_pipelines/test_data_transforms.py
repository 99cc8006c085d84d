"""Pure-numpy transforms shared by training and serving: normalization, state bins, prompt, augmentation."""
import numpy as np
import pytest

from data_pipelines.transforms.image_aug import augment_image
from data_pipelines.transforms.normalize import FeatureStats, normalize, pad_last, state_bins, unnormalize
from data_pipelines.transforms.prompt import build_robot_prompt, normalize_question_text


def stats(**kw):
    d = {"min": [0.0, -1.0, 5.0, 0.0], "max": [10.0, 1.0, 5.0, 1.0], "mean": [5.0, 0.0, 5.0, 0.5],
         "std": [2.0, 0.5, 0.0, 0.5], "q01": [1.0, -0.5, 5.0, 0.0], "q99": [9.0, 0.5, 5.0, 1.0],
         "mask": [True, True, True, False], "names": ["j0", "j1", "j2", "gripper"]}
    d.update(kw)
    return FeatureStats.from_json(d)


def test_normalize_q01_q99_formula_mask_and_zero_mask():
    s = stats()
    x = np.array([[5.0, 0.25, 5.0, 0.7], [20.0, -3.0, 7.0, 0.2]])
    y = normalize(x, s)
    np.testing.assert_allclose(y[0], [0.0, 0.5, 0.0, 0.7], atol=1e-6)   # 2(x-q01)/(q99-q01)-1
    np.testing.assert_allclose(y[1], [1.0, -1.0, 0.0, 0.2], atol=1e-6)  # clipped; min==max -> 0; mask -> raw
    back = unnormalize(y, s)
    np.testing.assert_allclose(back[0, :2], x[0, :2], atol=1e-5)
    np.testing.assert_allclose(back[1, :2], [9.0, -0.5], atol=1e-5)     # clipped at q99 / q01
    np.testing.assert_allclose(unnormalize([[0, 0, 0, 3.0]], s)[0, 3], 1.0)  # masked: the clipped y


def test_normalize_degenerate_range_uses_eps_and_other_modes():
    s = stats(q01=[1.0, 0.0, 5.0, 0.0], q99=[1.0, 0.0, 5.0, 1.0], min=[0.0, -1.0, 5.0, 0.0])
    y = normalize(np.array([1.0 + 1e-7, 0.0, 5.0, 0.5]), s)
    np.testing.assert_allclose(y[:2], [np.clip(2 * 1e-7 / 1e-6 - 1, -1, 1), -1.0], atol=1e-6)
    np.testing.assert_allclose(normalize(np.array([7.0, 0.5, 5.0, 0.5]), stats(), "mean_std")[:2], [1.0, 1.0])
    np.testing.assert_allclose(normalize(np.array([10.0, 0.0, 5.0, 0.5]), stats(), "min_max")[:2], [1.0, 0.0])
    with pytest.raises(ValueError, match="norm_mode"):
        normalize(np.zeros(4), stats(), "bogus")
    with pytest.raises(ValueError, match="q01"):
        FeatureStats.from_json({"min": [0], "max": [1], "mean": [0], "std": [1]})


def test_state_bins():
    b = state_bins(np.array([-1.0, 1.0, 0.0, np.nan, np.inf, -np.inf, 2.0, -1 + 2 * 0.5 / 255]))
    # 0.0 -> 127.5 -> 128 (rint: half to even); nan -> 0.0; +inf -> 1; -inf -> -1; clip
    np.testing.assert_array_equal(b, [0, 255, 128, 128, 255, 0, 255, 0])


def test_pad_last():
    x, pad = pad_last(np.ones((2, 6), np.float32), 32)
    assert x.shape == (2, 32) and pad.sum() == 26 and x[:, 6:].sum() == 0
    with pytest.raises(ValueError, match="max_action_dim"):
        pad_last(np.ones(33), 32)


@pytest.mark.parametrize("raw,expected", [
    ("Pick up the red block.", "pick up the red block"),
    ('  "Task:   Pick up the red block!"  ', "pick up the red block"),
    ("[Instruction: goal: Open the drawer.]", "open the drawer"),
    ("The task is to open the drawer. Then close it!!", "open the drawer; then close it"),
    ("'stack the cups?'", "stack the cups"),
])
def test_normalize_question_text(raw, expected):
    assert normalize_question_text(raw) == expected


def test_prompt_exact_string():
    p = build_robot_prompt("Pick up the red block.", 1, [0, 255], "single so100/so101 robotic arm in molmoact2",
                           "absolute joint pose")
    assert p == ("<|image|><|im_start|>user\nThe task is to pick up the red block. The setup is <setup_start>single "
                 "so100/so101 robotic arm in molmoact2<setup_end>. The current state of the robot is <state_start>"
                 "<state_0><state_255><state_end>. The expected control mode is <control_start>absolute joint pose"
                 "<control_end>. Given these, what action should the robot take to complete the task?<|im_end|>\n"
                 "<|im_start|>assistant\n<action_output>")
    p3 = build_robot_prompt("x", 3, None, "s", "c", style="robot_depth_action")
    assert p3.startswith("Image 1<|image|>Image 2<|image|>Image 3<|image|><|im_start|>user\n")
    assert "current state" not in p3 and "The setup is <setup_start>s<setup_end>. The expected" in p3
    assert p3.endswith("first predict the depth map of the main image and then predict the action the robot should "
                       "take to complete the task?<|im_end|>\n<|im_start|>assistant\n<depth_output><action_output>")
    assert build_robot_prompt("x", 0, None, "s", "c").startswith("<|im_start|>user\n")


def test_augment_image_deterministic_and_shape():
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    a = augment_image(img, np.random.default_rng(1))
    b = augment_image(img, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img)
