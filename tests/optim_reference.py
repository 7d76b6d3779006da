"""A plain float64 Adafactor written line by line from the paper's Algorithms 4 and 5 (Shazeer & Stern 2018)
and the row-only / column-only estimators of the end of its Section 3; used only by the tests to pin
adafactor_repro.optim.Adafactor."""

from __future__ import annotations

import math


class ReferenceAdafactor:
    def __init__(self, params, lr, beta1=0.0, beta2=None, decay_exponent=0.8, eps1=1e-30, eps2=1e-3,
                 clip_threshold=1.0, factored=True, min_dim_size_to_factor=128, scale_parameter=True,
                 weight_decay=0.0):  # fmt: skip
        self.x = [p.detach().double().clone() for p in params]
        self.lr, self.beta1, self.beta2, self.c = lr, beta1, beta2, decay_exponent
        self.eps1, self.eps2, self.d = eps1, eps2, clip_threshold
        self.factored, self.k, self.scale, self.wd = factored, min_dim_size_to_factor, scale_parameter, weight_decay
        self.t = 0
        self.state = [{} for _ in self.x]
        self.rms_u: list[float] = []
        self.alpha: list[float] = []

    def is_factored(self, shape) -> bool:
        return self.factored is not False and len(shape) >= 2 and shape[-1] >= self.k and shape[-2] >= self.k

    def step(self, grads):
        self.t += 1
        t = self.t
        if self.beta2 is None:
            b2 = 1.0 - t ** (-self.c)  # Section 7.2
        else:
            b2 = self.beta2 * (1 - self.beta2 ** (t - 1)) / (1 - self.beta2**t)  # Section 7.1
        rms = lambda z: math.sqrt(float((z * z).mean()))
        self.rms_u, self.alpha = [], []
        for i, (x, g) in enumerate(zip(self.x, grads)):
            g = g.double()
            s = self.state[i]
            g2 = g * g + self.eps1
            if self.is_factored(x.shape) and self.factored == "row":  # Section 3: V-hat_ij = R_i
                s["R"] = b2 * s.get("R", 0.0) + (1 - b2) * g2.mean(-1)
                v_hat = s["R"].unsqueeze(-1).expand_as(g)
            elif self.is_factored(x.shape) and self.factored == "col":  # Section 3: V-hat_ij = C_j
                s["C"] = b2 * s.get("C", 0.0) + (1 - b2) * g2.mean(-2)
                v_hat = s["C"].unsqueeze(-2).expand_as(g)
            elif self.is_factored(x.shape):  # Algorithm 4
                s["R"] = b2 * s.get("R", 0.0) + (1 - b2) * g2.mean(-1)
                s["C"] = b2 * s.get("C", 0.0) + (1 - b2) * g2.mean(-2)
                v_hat = s["R"].unsqueeze(-1) * s["C"].unsqueeze(-2) / s["R"].mean(-1)[..., None, None]
            else:  # Algorithm 5
                s["V"] = b2 * s.get("V", 0.0) + (1 - b2) * g2
                v_hat = s["V"]
            u = g / v_hat.sqrt()
            self.rms_u.append(rms(u))
            if self.d is not None:
                u = u / max(1.0, rms(u) / self.d)  # Section 6
            alpha = self.lr * max(self.eps2, rms(x)) if self.scale else self.lr  # Section 8
            self.alpha.append(alpha)
            if self.wd:
                x = x - self.lr * self.wd * x
            if self.beta1 > 0:
                s["M"] = self.beta1 * s.get("M", 0.0) + (1 - self.beta1) * alpha * u
                x = x - s["M"]
            else:
                x = x - alpha * u
            self.x[i] = x
