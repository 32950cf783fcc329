"""BasisN-aware fine-tuning: train a global basis and quantized coefficients for an ONNX model.

    python -m tools.finetune_basis models/digits_cnn.onnx --basis 4 -o tuned.onnx \
        [--basis-out tuned.basis.npz] [--unit 9] [--coef-bits 4] [--epochs 12]
        [--contest 0.01] [--distill 0.7] [--shift 0] [--lr 3e-3] [--seed 0]
        [--data X.npy --labels y.npy] [--upsample 1]
    cimc tuned.onnx --basis tuned.basis.npz ...      # uses the trained decomposition exactly

Needs the ``train`` extra (torch); the compiler and runtime never import it. The graph runs in
torch (``tools.finetune_noise.OnnxModule``). Every Conv/Gemm/MatMul weight is built from the
shared basis B [unit, N] and its layer's coefficients C [U, N, M] as in ``compiler.basis``:
W = B C, quantized per kernel to ``--coef-bits`` with a straight-through estimator (the
forward pass sees the quantized levels, gradients reach the float coefficients). Training
starts from the post-training fit (``compiler.basis.fit.fit``) and alternates by epoch:
coefficient epochs (coefficients, biases, batchnorm affine parameters) and basis epochs (the
basis). The contest-aware term penalises, per unit, how far the busiest basis column's
selection load exceeds the mean column load (a soft maximum over columns of the summed
coefficient magnitudes in levels), which is what the combiner's merged reads pay for
(``isa.combiner``). Outputs are written atomically: the model with the decomposed weights,
and the basis set.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import numpy_helper

from compiler.basis import BasisLayer, BasisSet, qmax
from compiler.basis.fit import fit
from compiler.basis.layers import layer_matrices, node_matrix
from compiler.frontend import node_name
from tools.finetune_noise import OnnxModule, save_model, training_data


class BasisLayers:
    """Per crossbar layer: the torch coefficient parameter and the index map from the
    lowered [K, M] matrix back into the ONNX weight tensor."""

    def __init__(self, model: onnx.ModelProto, start: BasisSet):
        import torch
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.torch, self.unit, self.bits = torch, start.unit, start.bits
        self.basis = torch.tensor(start.basis, requires_grad=True)
        self.layers = {}
        for node in model.graph.node:
            name = node_name(node)
            if name not in start.layers:
                continue
            w = inits[node.input[1]]
            index = node_matrix(node, np.arange(1, w.size + 1, dtype=np.float64).reshape(w.shape))
            pos = np.nonzero(index)
            coef = torch.tensor(start.layers[name].coefficients(), requires_grad=True)
            self.layers[name] = (node.input[1], w.shape, index.shape, coef,
                                 torch.from_numpy(np.ravel_multi_index(pos, index.shape)),
                                 torch.from_numpy(index[pos].astype(np.int64) - 1))

    def quantized(self, coef):
        """(levels with a straight-through gradient, per-kernel scales)."""
        q = qmax(self.bits)
        scale = coef.detach().abs().amax(dim=(0, 1)).clamp_min(1e-12) / q
        levels = (coef / scale).clamp(-q, q)
        levels = levels + (levels.round() - levels).detach()
        return levels, scale

    def weights(self) -> dict:
        """{initializer name: weight tensor} from the basis and quantized coefficients."""
        out = {}
        for init, shape, (k, m), coef, mat_idx, w_idx in self.layers.values():
            levels, scale = self.quantized(coef)
            mat = self.torch.einsum("ln,unm->ulm", self.basis, levels * scale).reshape(-1, m)[:k]
            flat = self.torch.zeros(int(np.prod(shape)), dtype=mat.dtype)
            out[init] = flat.index_put((w_idx,), mat.reshape(-1)[mat_idx]).reshape(shape)
        return out

    def contest(self):
        """Mean over units of (soft-max column load - mean column load) / kernels."""
        total, count = 0.0, 0
        for *_, coef, _, _ in self.layers.values():
            levels, _ = self.quantized(coef)
            load = levels.abs().sum(dim=2)  # [U, N]
            soft_max = self.torch.logsumexp(load * 4.0, dim=1) / 4.0
            total = total + ((soft_max - load.mean(dim=1)) / coef.shape[2]).sum()
            count += coef.shape[0]
        return total / max(count, 1)

    def basis_set(self) -> BasisSet:
        layers = {}
        for name, (_, _, (k, _), coef, _, _) in self.layers.items():
            levels, scale = self.quantized(coef)
            layers[name] = BasisLayer(levels.detach().round().numpy().astype(np.int32),
                                      scale.detach().numpy().astype(np.float32), k)
        return BasisSet(self.basis.detach().numpy().astype(np.float32), self.bits, layers)


def shift(x, pixels: int, gen):
    """Images [B, C, H, W] translated by up to ``pixels`` in each direction (zero fill), one
    random offset per batch: cheap augmentation against overfitting small datasets."""
    import torch
    if pixels <= 0 or x.dim() != 4:
        return x
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    out = torch.zeros_like(x)
    h, w = x.shape[2:]
    out[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, :, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _loss(logits, labels, teacher, distill: float, temperature: float = 4.0):
    """Cross-entropy, blended with distillation from the float model's outputs: with a small
    training set, matching the float model's soft outputs generalises better than labels."""
    import torch.nn.functional as F
    ce = F.cross_entropy(logits, labels)
    if not distill:
        return ce
    kl = F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(teacher / temperature, 1),
                  reduction="batchmean") * temperature ** 2
    return (1 - distill) * ce + distill * kl


def finetune(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, n: int, unit: int = 9,
             bits: int = 4, epochs: int = 12, contest: float = 0.01, seed: int = 0,
             lr: float = 3e-3, shifts: int = 0, distill: float = 0.7,
             log=print) -> tuple[onnx.ModelProto, BasisSet]:
    import torch
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = OnnxModule(model)
    bl = BasisLayers(model, fit(layer_matrices(model), n, unit, bits, seed=seed))
    crossbar = {init for init, *_ in bl.layers.values()}
    others = [p for k, p in net.params.items() if p.requires_grad and k not in crossbar]
    coef_opt = torch.optim.Adam([c for *_, c, _, _ in bl.layers.values()] + others, lr=lr)
    basis_opt = torch.optim.Adam([bl.basis], lr=lr / 3)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    with torch.no_grad():
        teacher = net(xt)  # the float model: its soft outputs are the distillation target
    decay = [torch.optim.lr_scheduler.CosineAnnealingLR(o, epochs) for o in (coef_opt, basis_opt)]
    for epoch in range(epochs):
        opt = coef_opt if epoch % 2 == 0 else basis_opt
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            logits = net(shift(xt[idx], shifts, gen), replace=bl.weights())
            loss = _loss(logits, yt[idx], teacher[idx], distill) + contest * bl.contest()
            loss.backward()
            opt.step()
        for d in decay:
            d.step()
        with torch.no_grad():
            acc = (net(xt, replace=bl.weights()).argmax(1) == yt).float().mean().item()
        log(f"epoch {epoch + 1}/{epochs} ({'coefficients' if epoch % 2 == 0 else 'basis'}): "
            f"loss {loss.item():.4f}, train accuracy {100 * acc:.2f} %")
    with torch.no_grad():
        return net.export(bl.weights()), bl.basis_set()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the float model (.onnx)")
    p.add_argument("-o", "--output", required=True, help="fine-tuned model (.onnx)")
    p.add_argument("--basis-out", help="basis set (.npz; default: OUTPUT with .basis.npz)")
    p.add_argument("--basis", type=int, required=True, help="basis vectors N")
    p.add_argument("--unit", type=int, default=9, help="basis vector length (default 9)")
    p.add_argument("--coef-bits", type=int, default=4, help="coefficient bits (default 4)")
    p.add_argument("--epochs", type=int, default=12, help="epochs, alternating (default 12)")
    p.add_argument("--contest", type=float, default=0.01,
                   help="weight of the contest-aware term (default 0.01; 0 switches it off)")
    p.add_argument("--data", help="training inputs .npy (default: the digits training split)")
    p.add_argument("--labels", help="training labels .npy")
    p.add_argument("--upsample", type=int, default=1,
                   help="repeat every pixel of the training images KxK (default 1: as they "
                        "are; 4 turns the 8x8 digits into the 32x32 inputs of "
                        "models/digits_resnet20.onnx, as tools.make_digits_resnet20.upsample)")
    p.add_argument("--shift", type=int, default=0,
                   help="augment image batches by random shifts of up to this many pixels "
                        "(default 0: off)")
    p.add_argument("--distill", type=float, default=0.7,
                   help="weight of distillation from the float model against the labels' "
                        "cross-entropy (default 0.7; 0: labels only)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam step size (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="torch's seed (default 0)")
    args = p.parse_args(argv)
    x, y = training_data(args.data, args.labels)
    if args.upsample != 1:
        if args.upsample < 1 or x.ndim != 4:
            p.error(f"--upsample {args.upsample}: needs K >= 1 and images [N, C, H, W] "
                    f"(the training inputs are {list(x.shape)})")
        x = np.ascontiguousarray(x.repeat(args.upsample, axis=2).repeat(args.upsample, axis=3))
    model, basis = finetune(onnx.load(args.model), x, y, args.basis, args.unit, args.coef_bits,
                            args.epochs, args.contest, args.seed, args.lr, args.shift,
                            args.distill)
    save_model(model, args.output)
    basis_out = args.basis_out or os.path.splitext(args.output)[0] + ".basis.npz"
    basis.save(basis_out)
    print(f"wrote {args.output} and {basis_out}")


if __name__ == "__main__":
    main()
