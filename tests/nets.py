"""Networks shared by the tests: one per layer kind the tracer supports, plus random weights."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm running statistics (so permuting them matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                fan_in = max(t[0].numel(), 1)
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return model.eval()


# ----------------------------------------------------------------------------- models
def mlp(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Residual(nn.Module):
    """A ResNet basic block with an optional projection shortcut."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self, w=4, blocks=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stage1 = nn.Sequential(*[Residual(w, w) for _ in range(blocks)])
        self.stage2 = nn.Sequential(Residual(w, 2 * w, 2), *[Residual(2 * w, 2 * w) for _ in range(blocks - 1)])
        self.head = nn.Linear(2 * w, 5)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class HandAttention(nn.Module):
    """Fused qkv, reshape into heads, softmax(q k^T) v, heads merged back."""

    def __init__(self, d=8, h=2):
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (C // self.h) ** -0.5
        out = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(out)


class SplitAttention(nn.Module):
    """Separate q, k, v projections, view/transpose into heads, chunked variant too."""

    def __init__(self, d=8, h=2, chunk=False):
        super().__init__()
        self.h, self.chunk = h, chunk
        if chunk:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        if self.chunk:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (t.view(B, N, self.h, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).contiguous().view(B, N, C))


class Encoder(nn.Module):
    def __init__(self, att: nn.Module, d=8, torch_mha=False):
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.pos = nn.Parameter(torch.zeros(1, 4, d))
        self.norm1 = nn.LayerNorm(d)
        self.att = att
        self.torch_mha = torch_mha
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        x = self.embed(x) + self.pos
        y = self.norm1(x)
        x = x + (self.att(y, y, y, need_weights=False)[0] if self.torch_mha else self.att(y))
        x = x + self.mlp(self.norm2(x))
        return self.out(x[:, 0])


class MHAEncoder(nn.Module):
    """One pre-norm block on ``nn.MultiheadAttention`` over 6 input features, 3 outputs: heads
    permute as blocks, Q with K and V with the output projection."""

    def __init__(self, d=8, h=2):
        super().__init__()
        self.inp = nn.Linear(6, d)
        self.att = nn.MultiheadAttention(d, h, batch_first=True)
        self.ln = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.att(x, x, x, need_weights=False)[0]
        x = x + self.ff(self.ln(x))
        return self.out(x.mean(1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 7)
        self.c = nn.Linear(12, 4)
        self.d = nn.Linear(4 + 6, 2)

    def forward(self, x):
        h = torch.cat([self.a(x).relu(), self.b(x).tanh()], dim=-1)
        h = self.c(h).relu()
        return self.d(torch.cat([h, x], dim=1))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.fc = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tok):
        return self.head(F.gelu(self.fc(self.emb(tok))).mean(1))


class Functional(nn.Module):
    """Parameters used through torch.nn.functional, names that mean nothing."""

    def __init__(self):
        super().__init__()
        self.W0 = nn.Parameter(torch.randn(9, 4))
        self.beta = nn.Parameter(torch.randn(9))
        self.W1 = nn.Parameter(torch.randn(2, 9))

    def forward(self, x):
        return F.linear(torch.tanh(F.linear(x, self.W0, self.beta)), self.W1)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({
            "first": nn.Sequential(nn.Conv1d(2, 6, 3), nn.GroupNorm(3, 6), nn.SiLU()),
            "second": nn.ModuleList([nn.Conv1d(6, 6, 3, padding=1), nn.BatchNorm1d(6)]),
        })
        self.head = nn.Linear(6 * 6, 3)

    def forward(self, x):
        x = self.blocks["first"](x)
        x = x + self.blocks["second"][1](self.blocks["second"][0](x))
        return self.head(torch.flatten(F.relu(x), 1))


CASES = {
    "mlp": (lambda: mlp([4, 8, 16, 8, 3]), lambda: torch.randn(3, 4)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU(), nn.Conv1d(5, 4, 3, bias=False), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(4, 2)), lambda: torch.randn(2, 2, 9)),
    "conv2d_flatten": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)), lambda: torch.randn(2, 3, 8, 8)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 4, 1), nn.AvgPool3d(2), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)), lambda: torch.randn(2, 1, 6, 6, 6)),
    "grouped": (lambda: nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3, groups=4), nn.ReLU(), nn.Conv2d(12, 24, 1, groups=12), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 3)), lambda: torch.randn(2, 2, 9, 9)),
    "conv_transpose": (lambda: nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 12, 3, groups=4), nn.ReLU(), nn.ConvTranspose2d(12, 12, 3, groups=12), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3)), lambda: torch.randn(2, 2, 9, 9)),
    "batchnorm1d": (lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)), lambda: torch.randn(5, 4)),
    "layernorm_groupnorm": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.GELU(), nn.Conv2d(8, 6, 3), nn.GroupNorm(1, 6), nn.Flatten(), nn.Linear(6 * 4 * 4, 7), nn.LayerNorm(7), nn.SiLU(), nn.Linear(7, 2)), lambda: torch.randn(2, 3, 8, 8)),
    "resnet": (lambda: TinyResNet(), lambda: torch.randn(2, 3, 8, 8)),
    "concat": (lambda: Concat(), lambda: torch.randn(3, 6)),
    "embedding": (lambda: Embed(), lambda: torch.randint(0, 11, (2, 5))),
    "torch_mha": (lambda: Encoder(nn.MultiheadAttention(8, 2, batch_first=True), torch_mha=True), lambda: torch.randn(2, 4, 5)),
    "hand_attention": (lambda: Encoder(HandAttention()), lambda: torch.randn(2, 4, 5)),
    "split_attention": (lambda: Encoder(SplitAttention()), lambda: torch.randn(2, 4, 5)),
    "chunk_attention": (lambda: Encoder(SplitAttention(chunk=True)), lambda: torch.randn(2, 4, 5)),
    "functional": (lambda: Functional(), lambda: torch.randn(3, 4)),
    "nested": (lambda: Nested(), lambda: torch.randn(2, 2, 8)),
}



class Twice(nn.Module):
    """One module applied twice: two copies of its edges, the first one written back."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.c(self.b(self.b(self.a(x).relu()).relu()).relu())


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.e, self.f = nn.Linear(5, 8), nn.Linear(5, 6)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True, kdim=6, vdim=6)
        self.o = nn.Linear(8, 3)

    def forward(self, x):
        return self.o(self.att(self.e(x), self.f(x), self.f(x), need_weights=False)[0])


class BiasKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = nn.Linear(5, 8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)
        self.o = nn.Linear(8, 3)

    def forward(self, x):
        h = self.e(x)
        return self.o(h + self.att(h, h, h, need_weights=False)[0])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 5)
        self.mid = nn.Linear(5, 5)
        self.out = nn.Linear(5, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, t):
        return self.out(self.mid(self.emb(t)).relu())


# cases beyond the layer kinds (parameter graphs use them too)
EXTRA_CASES = {
    "conv_transpose_instancenorm": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 6, 3), nn.InstanceNorm2d(6, affine=True, track_running_stats=True), nn.ReLU(), nn.Conv2d(6, 2, 1)), lambda: torch.randn(2, 2, 6, 6)),
    "module_twice": (lambda: Twice(), lambda: torch.randn(3, 4)),
    "cross_attention": (lambda: CrossAttention(), lambda: torch.randn(2, 4, 5)),
    "bias_kv": (lambda: BiasKV(), lambda: torch.randn(2, 4, 5)),
    "tied": (lambda: Tied(), lambda: torch.randint(0, 7, (2, 3))),
    "norm_on_input": (lambda: nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), lambda: torch.randn(5, 4)),
    "layernorm_chw": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.LayerNorm([4, 4, 4]), nn.Flatten(), nn.Linear(64, 2)), lambda: torch.randn(2, 2, 6, 6)),
}


# --------------------------------------------------------------------------- trained pairs
def teacher_data(seed: int = 0, n: int = 2048, d: int = 16, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels from a random tanh teacher: learnable, but not so easy that every path is flat."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w1, w2 = torch.randn(d, 32, generator=g), torch.randn(32, k, generator=g)
    return x, (torch.tanh(x @ w1) @ w2).argmax(dim=1)


def teacher_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def train_teacher_mlp(seed: int, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> nn.Module:
    """Adam on random minibatches of 128; a different seed gives a different basin."""
    torch.manual_seed(seed)
    model = teacher_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


class BranchyMLP(nn.Module):
    """An MLP whose forward branches on the data at the root: torch.fx cannot trace it, so
    nothing can be proved safe to permute."""

    input_shape = (16,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:  # data-dependent control flow
            h = h * 1.0
        return self.fc2(h)


def _conv_bn(i: int, o: int, k: int = 3, s: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 projection, residual when shapes agree."""

    def __init__(self, i: int, o: int, stride: int, expand: int) -> None:
        super().__init__()
        h = i * expand
        self.residual = stride == 1 and i == o
        layers = ([_conv_bn(i, h, 1)] if expand != 1 else []) + [_conv_bn(h, h, 3, stride, groups=h),
                                                                  _conv_bn(h, o, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class TinyMobileNet(nn.Module):
    """A MobileNetV2-like network; at torchvision's initialisation (BatchNorm weight 1, bias 0) its
    expansion and depthwise groups carry little signal for weight matching from the identity."""

    input_shape = (3, 16, 16)

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, width, 3, 2)]
        c = width
        for expand, o, n, s in ((1, width, 1, 1), (6, 2 * width, 2, 2), (6, 4 * width, 2, 2)):
            for k in range(n):
                layers.append(InvertedResidual(c, o, s if k == 0 else 1, expand))
                c = o
        layers.append(_conv_bn(c, 32, 1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(32, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))
