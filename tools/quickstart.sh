#!/usr/bin/env bash
# Install into .venv, compile the bundled digits CNN, run it on the test split, and print the
# accuracy next to onnxruntime's. Outputs land in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/venv.sh
mkdir -p out
.venv/bin/cimc models/digits_cnn.onnx -o out/digits_cnn.cim --dump-ir out/ir
.venv/bin/cimrun out/digits_cnn.cim --input models/digits_test_x.npy \
    --labels models/digits_test_y.npy -o out/logits.npy --report out/report.json
.venv/bin/python - <<'PY'
import json
import numpy as np
import onnxruntime as ort
x, y = np.load("models/digits_test_x.npy"), np.load("models/digits_test_y.npy")
ref = ort.InferenceSession("models/digits_cnn.onnx").run(None, {"image": x})[0]
report = json.load(open("out/report.json"))
print(f"accuracy on {len(y)} test images: cimrun (ideal) {report['accuracy']:.4f}, "
      f"onnxruntime {(ref.argmax(1) == y).mean():.4f}")
print("program: out/digits_cnn.cim   IR after every pass: out/ir/   report: out/report.json")
PY
