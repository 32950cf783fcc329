"""ONNX's own backend node tests and pytorch-converted models, in ideal mode (point 2)."""

from __future__ import annotations

from collections import Counter

from tools import conformance


def test_no_supported_conformance_test_fails():
    outcomes = conformance.run_all()
    counts = Counter(o.status for o in outcomes)
    failed = [f"{o.name}: {o.detail}" for o in outcomes if o.status == "failed"]
    assert not failed, "\n".join(failed)
    # Guard against support silently shrinking (e.g. a frontend bug rejecting everything).
    assert counts["passed"] >= 850, counts
    passed = {o.name for o in outcomes if o.status == "passed"}
    for must in ("node/test_conv_with_strides_padding", "node/test_maxpool_2d_ceil",
                 "node/test_averagepool_2d_pads_count_include_pad", "node/test_lrn",
                 "pytorch-converted/test_Conv2d_depthwise_strided", "node/test_gemm_all_attributes",
                 "node/test_softmax_axis_0", "pytorch-converted/test_ReflectionPad2d",
                 "pytorch-converted/test_ReplicationPad2d",
                 # transformer operators (issue 13)
                 "node/test_layer_normalization_4d_axis_negative_1_expanded", "node/test_erf",
                 "node/test_gelu_default_1", "node/test_gelu_tanh_1", "node/test_matmul_4d",
                 "node/test_reduce_mean_default_axes_keepdims_example", "node/test_slice_neg_steps",
                 "node/test_split_variable_parts_2d_opset18",
                 # operators added since (tests/test_more_operators.py)
                 "node/test_logsoftmax_axis_1", "node/test_reduce_max_empty_set",
                 "node/test_reduce_log_sum_desc_axes",
                 "node/test_rms_normalization_3d_axis1_epsilon", "node/test_prelu_broadcast",
                 "node/test_max_example", "node/test_hardswish_expanded", "node/test_mish",
                 "pytorch-converted/test_PReLU_2d_multiparam", "node/test_upsample_nearest",
                 "node/test_resize_downsample_scales_cubic_antialias",
                 "node/test_resize_downsample_sizes_linear_pytorch_half_pixel",
                 "node/test_convtranspose_group_2", "node/test_convtranspose_output_shape",
                 "node/test_convtranspose_autopad_same", "pytorch-converted/test_Embedding",
                 "node/test_less", "node/test_where_example", "node/test_xor_bcast4v4d",
                 "node/test_attention_4d", "node/test_mvn",
                 "node/test_l2normalization_axis_1", "node/test_lpnormalization_default"):
        assert must in passed, must
