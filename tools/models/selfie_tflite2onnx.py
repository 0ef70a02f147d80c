#!/usr/bin/env python3
"""Converts MediaPipe's selfie segmentation model (selfie_segmentation.tflite) to ONNX.

    selfie_tflite2onnx.py IN.tflite OUT.onnx

The whole graph is rewritten to NCHW (no transposes inside): input `input` [N,3,256,256]
float32 RGB in [0,1], output `mask` [N,1,256,256] person probability (the model ends in a
sigmoid). Weights are fp16 behind DEQUANTIZE ops in the TFLite file; they are dequantized
here and stored as float32. Only the operators this model uses are handled; anything else
is an error. The output is deterministic (same bytes on every run with the pinned packages),
so tools/fetch-models.sh pins its SHA-256.
"""
import sys

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # Resize with half_pixel, HardSwish (14+); IR 8 keeps older runtimes happy
IR_VERSION = 8

OPS = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
SAME, VALID = tflite.Padding.SAME, tflite.Padding.VALID
# Fused activation -> (ONNX op, attributes); NONE needs nothing.
ACT = {
    tflite.ActivationFunctionType.RELU: ("Relu", {}),
    tflite.ActivationFunctionType.RELU6: ("Clip", {"min": 0.0, "max": 6.0}),
    tflite.ActivationFunctionType.RELU_N1_TO_1: ("Clip", {"min": -1.0, "max": 1.0}),
    tflite.ActivationFunctionType.TANH: ("Tanh", {}),
}


def same_pads(size, k, s):
    """TFLite SAME padding (before, after): the odd pixel goes after (bottom/right)."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class Converter:
    def __init__(self, buf):
        self.m = tflite.Model.GetRootAsModel(buf, 0)
        assert self.m.SubgraphsLength() == 1, "one subgraph expected"
        self.g = self.m.Subgraphs(0)
        self.nodes, self.inits, self.consts = [], [], {}
        self.names = {}  # TFLite tensor index -> ONNX value name
        (self.tin,), (self.tout,) = self.g.InputsAsNumpy(), self.g.OutputsAsNumpy()
        self.names[self.tin], self.names[self.tout] = "input", "mask"

    def name(self, t):
        if t not in self.names:
            self.names[t] = self.g.Tensors(t).Name().decode()
        return self.names[t]

    def shape(self, t):
        return [int(d) for d in self.g.Tensors(t).ShapeAsNumpy()]

    def const(self, t):
        """Float32 contents of a constant tensor (fp16 buffer or a DEQUANTIZE output)."""
        if t in self.consts:
            return self.consts[t]
        tt = self.g.Tensors(t)
        data = self.m.Buffers(tt.Buffer()).DataAsNumpy()
        dtype = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32,
                 tflite.TensorType.INT32: np.int32}[tt.Type()]
        assert not isinstance(data, int), f"tensor {tt.Name()} is not a constant"
        return data.view(dtype).reshape(self.shape(t))

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op, ins, out, **attrs):
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{len(self.nodes)}", **attrs))

    def emit(self, op, ins, t_out, act, **attrs):
        """Emits `op` into the TFLite output tensor, with its fused activation if any."""
        out = self.name(t_out)
        if act == tflite.ActivationFunctionType.NONE:
            return self.node(op, ins, out, **attrs)
        assert act in ACT, f"fused activation {act} unsupported"
        self.node(op, ins, out + "_preact", **attrs)
        self.activation(ACT[act], out + "_preact", out)

    def activation(self, act, x, out):
        a_op, a_attrs = act
        if a_op == "Clip":  # Clip-11+: the bounds are inputs
            lo = self.init(f"{out}_min", np.array(a_attrs["min"], np.float32))
            hi = self.init(f"{out}_max", np.array(a_attrs["max"], np.float32))
            return self.node("Clip", [x, lo, hi], out)
        self.node(a_op, [x], out)

    def opts(self, op, cls):
        o = cls()
        t = op.BuiltinOptions()
        o.Init(t.Bytes, t.Pos)
        return o

    def conv_pads(self, t_in, kh, kw, o):
        _, h, w, _ = self.shape(t_in)
        if o.Padding() == VALID:
            return [0, 0, 0, 0]
        (t, b), (l, r) = same_pads(h, kh, o.StrideH()), same_pads(w, kw, o.StrideW())
        return [t, l, b, r]

    def convert_op(self, op):
        code = self.m.OperatorCodes(op.OpcodeIndex())
        kind = OPS[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ins, (t_out,) = list(op.InputsAsNumpy()), op.OutputsAsNumpy()
        x = self.name(ins[0]) if ins[0] not in self.consts else None
        if kind == "DEQUANTIZE":  # fp16 weights -> float32 constants, folded into consumers
            self.consts[t_out] = self.const(ins[0]).astype(np.float32)
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            dw = kind == "DEPTHWISE_CONV_2D"
            o = self.opts(op, tflite.DepthwiseConv2DOptions if dw else tflite.Conv2DOptions)
            k = self.const(ins[1])  # conv [O,H,W,I]; depthwise [1,H,W,C*mult]
            k = k.transpose(3, 0, 1, 2) if dw else k.transpose(0, 3, 1, 2)  # -> [O,I/g,H,W]
            wname = self.init(self.name(t_out) + "_W", k)
            bname = self.init(self.name(t_out) + "_B", self.const(ins[2]))
            group = self.shape(ins[0])[3] if dw else 1
            self.emit("Conv", [x, wname, bname], t_out, o.FusedActivationFunction(),
                      kernel_shape=list(k.shape[2:]), strides=[o.StrideH(), o.StrideW()],
                      dilations=[o.DilationHFactor(), o.DilationWFactor()], group=group,
                      pads=self.conv_pads(ins[0], k.shape[2], k.shape[3], o))
        elif kind == "CUSTOM" and code.CustomCode() == b"Convolution2DTransposeBias":
            # Options: TfLiteTransposeConvParams {padding (1=SAME, 2=VALID), stride_w, stride_h}.
            pad, sw, sh = np.frombuffer(op.CustomOptionsAsNumpy().tobytes(), "<i4")
            k = self.const(ins[1]).transpose(3, 0, 1, 2)  # [O,H,W,I] -> [I,O,H,W]
            (_, ih, iw, _), (_, oh, ow, _) = self.shape(ins[0]), self.shape(t_out)
            th, tw = ((ih - 1) * sh + k.shape[2] - oh, (iw - 1) * sw + k.shape[3] - ow) \
                if pad == 1 else (0, 0)
            assert pad in (1, 2) and th >= 0 and tw >= 0, "unsupported transpose conv padding"
            self.emit("ConvTranspose", [x, self.init(self.name(t_out) + "_W", k),
                                        self.init(self.name(t_out) + "_B", self.const(ins[2]))],
                      t_out, tflite.ActivationFunctionType.NONE,
                      kernel_shape=list(k.shape[2:]), strides=[int(sh), int(sw)],
                      pads=[th // 2, tw // 2, th - th // 2, tw - tw // 2])
        elif kind in ("ADD", "MUL"):  # all operands are NHWC rank 4 -> NCHW broadcast works
            o = self.opts(op, tflite.AddOptions if kind == "ADD" else tflite.MulOptions)
            assert all(len(self.shape(t)) == 4 and t not in self.consts for t in ins)
            self.emit(kind.capitalize(), [self.name(t) for t in ins], t_out,
                      o.FusedActivationFunction())
        elif kind == "AVERAGE_POOL_2D":
            o = self.opts(op, tflite.Pool2DOptions)
            _, h, w, _ = self.shape(ins[0])
            if o.Padding() == VALID and (o.FilterHeight(), o.FilterWidth()) == (h, w):
                self.emit("GlobalAveragePool", [x], t_out, o.FusedActivationFunction())
            else:  # TFLite's average excludes the padding
                self.emit("AveragePool", [x], t_out, o.FusedActivationFunction(),
                          kernel_shape=[o.FilterHeight(), o.FilterWidth()],
                          strides=[o.StrideH(), o.StrideW()], count_include_pad=0,
                          pads=self.conv_pads(ins[0], o.FilterHeight(), o.FilterWidth(), o))
        elif kind == "RESIZE_BILINEAR":
            o = self.opts(op, tflite.ResizeBilinearOptions)
            (_, ih, iw, _), (oh, ow) = self.shape(ins[0]), self.const(ins[1]).tolist()
            # Scales (not sizes) keep the batch dim free; exact only for integer ratios.
            assert oh % ih == 0 and ow % iw == 0, "non-integer resize ratio unsupported"
            mode = "align_corners" if o.AlignCorners() else \
                "half_pixel" if o.HalfPixelCenters() else "asymmetric"
            scales = self.init(self.name(t_out) + "_scales",
                               np.array([1, 1, oh / ih, ow / iw], np.float32))
            self.node("Resize", [x, "", scales], self.name(t_out), mode="linear",
                      coordinate_transformation_mode=mode)
        elif kind in ("RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "TANH"):
            # HardSwish is x*relu6(x+3)/6 in both; RELU6 becomes Clip(0, 6).
            act = {"RELU": ("Relu", {}), "RELU6": ACT[tflite.ActivationFunctionType.RELU6],
                   "LOGISTIC": ("Sigmoid", {}), "HARD_SWISH": ("HardSwish", {}),
                   "TANH": ("Tanh", {})}[kind]
            self.activation(act, x, self.name(t_out))
        else:
            raise SystemExit(f"unsupported TFLite op {kind} {code.CustomCode()}")

    def convert(self):
        for i in range(self.g.OperatorsLength()):
            self.convert_op(self.g.Operators(i))
        _, h, w, c = self.shape(self.tin)
        _, oh, ow, oc = self.shape(self.tout)
        graph = helper.make_graph(
            self.nodes, "selfie_segmentation",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
            [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", oc, oh, ow])],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="aegis selfie_tflite2onnx",
                                  doc_string="MediaPipe selfie segmentation (general, 256x256), "
                                             "converted from mediapipe==0.10.14's TFLite model. "
                                             "input: NCHW RGB in [0,1]; mask: person probability")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1:]
    with open(src, "rb") as f:
        model = Converter(f.read()).convert()
    with open(dst, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    print(f"{dst}: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers")


if __name__ == "__main__":
    main()
