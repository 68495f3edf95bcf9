"""lib/muon.py: Muon (Jordan et al. 2024), the optimiser of `sft.py --optimizer muon` for the
transformer blocks' weight matrices (common.py re-exports it). Momentum as usual, then each
update's singular values pushed toward 1: every direction of the matrix moves at one speed.
"""
import torch

from lib.config import autocast


def newton_schulz(g, steps=5):
    """≈ U Vᵀ of g = U S Vᵀ (every singular value pushed toward 1, the vectors kept): scale g
    to spectral norm ≤ 1, then x ← a x + (b x xᵀ + c (x xᵀ)²) x, which maps each singular
    value s to a s + b s³ + c s⁵ (Jordan et al.'s coefficients: fast, not exact)."""
    a, b, c_ = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)  # Frobenius norm 1 ≥ spectral norm
    x = x.T if g.shape[0] > g.shape[1] else x  # x xᵀ: the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c_ * gram @ gram) @ x
    return (x.T if g.shape[0] > g.shape[1] else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: Nesterov momentum, then the update orthogonalised (newton_schulz)
    and scaled by √max(1, rows/cols), as torch.optim.Muon (no weight decay) but with its matmuls
    in the run's precision (autocast): torch's casts to bf16, which made an SFT step 5.4×
    slower on a CPU without native bf16 (docs/machines.md)."""
    def __init__(self, params, lr, momentum=0.95):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in [p for p in group["params"] if p.grad is not None]:
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                with autocast(p.device):
                    update = newton_schulz(p.grad.lerp(buf, group["momentum"]))
                p.add_(update, alpha=-group["lr"] * max(1, p.shape[0] / p.shape[1]) ** 0.5)
