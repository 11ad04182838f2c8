"""Non-local block (1D / 2D / 3D) with the four pairwise functions of the paper.

Paper: `Non-local Neural Networks` - Xiaolong Wang, Ross Girshick, Abhinav Gupta, Kaiming He,
CVPR 2018, https://arxiv.org/abs/1711.07971

    y_i = 1 / C(x) * sum_j f(x_i, x_j) g(x_j)        (Eq. 1)
    z_i = W_z y_i + x_i                               (Eq. 6)

with ``theta``, ``phi``, ``g`` and ``W_z`` 1x1(x1) convolutions, ``W_z`` followed by a norm layer
whose affine parameters start at zero so the block is the identity at initialisation (Sec. 4.1).

Pairwise functions ``f`` and normalisations ``C(x)`` (Sec. 3.2), with M key positions:

* ``'gaussian'``:           f = exp(x_i^T x_j) on the raw input (theta = phi = identity), C = sum_j f,
                            i.e. a softmax over j. Not scaled: the paper writes exp(x_i^T x_j), and the
                            official Caffe2 code has no Gaussian variant to say otherwise.
* ``'embedded_gaussian'``:  f = exp(theta_i^T phi_j / s), C = sum_j f (softmax over j), with
                            s = sqrt(inner) when ``use_scale`` (the official code's USE_SCALE=True) else 1.
* ``'dot_product'``:        f = theta_i^T phi_j, C = M.
* ``'concatenation'``:      f = ReLU(w_f^T [theta_i, phi_j]), C = M.

Cost: nothing N x M is materialised by ``forward`` in the softmax modes (fused
``F.scaled_dot_product_attention``; the Gaussian mode, whose keys are wider than its values, runs in
query chunks on the CPU, see ``_chunked_attention``), nor in ``'dot_product'`` (associativity:
theta (phi^T g) / M costs O(N * inner^2)). ``'concatenation'`` splits w_f^T [theta_i, phi_j] =
a_i + b_j and processes the queries in chunks, so inference holds at most one chunk x M block of
pairwise weights at a time (under autograd the ReLU outputs of every chunk are kept for backward);
when traced or exported (ONNX, ``torch.export``) it uses an equivalent sort-based form whose graph
does not depend on the input size (see ``_concat_sorted``).

Half precision: the softmax modes rely on SDPA's float32 accumulation; the sums of the dot-product
and concatenation modes and the logits of ``attention_maps`` are computed in float32 (also under
autocast), so they do not overflow float16 where the block's output does not.
"""
import math
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from . import _attention
from ._validate import check_choice, check_input, check_positive_int, query_index, resolve_rd_channels

__all__ = ['NonLocal', 'NonLocal1d', 'NonLocal2d', 'NonLocal3d']

_MODES = ('gaussian', 'embedded_gaussian', 'dot_product', 'concatenation')
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
# Sub-sampling kernels (= strides) of the reference PyTorch ports: 2 (1D), 2x2 (2D), 1x2x2 (3D, time kept).
_POOL_KERNEL = {1: [2], 2: [2, 2], 3: [1, 2, 2]}
# Gaussian std of every 1x1 conv (NONLOCAL.CONV_INIT_STD of the official video-nonlocal-net config).
_INIT_STD = 0.01


def _resolve_chunk(chunk_size: Optional[int], batch: int, num_keys: int) -> int:
    if chunk_size is None:
        # At most 2**24 pairwise weights per chunk (64 MB in float32); a literal for TorchScript.
        return max(1, 16777216 // max(1, batch * num_keys))
    return chunk_size


def _concat_chunked(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, chunk_size: Optional[int]) -> torch.Tensor:
    """Eager path: the exact sums, ``chunk_size`` queries at a time (at most (B, M, chunk) weights)."""
    num_keys = b.shape[1]
    chunk_size = _resolve_chunk(chunk_size, a.shape[0], num_keys)
    b = b.unsqueeze(2)  # (B, M, 1)
    g = _attention.at_least_float32(g)
    out: List[torch.Tensor] = []
    for start in range(0, a.shape[1], chunk_size):
        f = torch.relu(b + a[:, None, start:start + chunk_size])  # (B, M, chunk)
        out.append(_attention.matmul_float32(g, f))  # (B, e, chunk)
    return torch.cat(out, dim=2) / num_keys


def _concat_sorted(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Traced/exported path: the same y without a loop whose length depends on the input size.

    ReLU(a_i + b_j) = (a_i + b_j) [b_j > -a_i], so y_i = (a_i G_i + T_i) / M with G_i, T_i the sums of
    g_j and b_j g_j over the keys with b_j > -a_i. One descending sort of [-a, b] puts every query
    after exactly those keys, so G and T are cumulative sums in that order, read at the queries. Holds
    (B, e, N + M) values, nothing N x M, and has static control flow (dynamic batch and spatial axes
    export). Equal up to rounding (a_i G_i + T_i may cancel where the chunked sums do not).
    """
    a = _attention.at_least_float32(a)
    b = _attention.at_least_float32(b)
    g = _attention.at_least_float32(g)
    batch, num_queries = a.shape
    width = g.shape[1]
    order = torch.sort(torch.cat([-a, b], dim=1), dim=1, descending=True)[1]  # (B, N + M)
    zeros = torch.zeros_like(a).unsqueeze(1).expand(batch, width, num_queries)
    g_ext = torch.cat([zeros, g], dim=2)  # queries contribute nothing to the sums
    bg_ext = torch.cat([zeros, g * b.unsqueeze(1)], dim=2)
    order_e = order.unsqueeze(1).expand(batch, width, order.shape[1])
    g_cum = torch.cumsum(torch.gather(g_ext, 2, order_e), dim=2)
    bg_cum = torch.cumsum(torch.gather(bg_ext, 2, order_e), dim=2)
    # position of every entry in the sorted order (the inverse permutation), read at the queries
    ranks = torch.arange(order.shape[1], device=order.device).unsqueeze(0).expand_as(order)
    where = torch.zeros_like(order).scatter(1, order, ranks)[:, :num_queries]
    where = where.unsqueeze(1).expand(batch, width, num_queries)
    y = a.unsqueeze(1) * torch.gather(g_cum, 2, where) + torch.gather(bg_cum, 2, where)
    return y / b.shape[1]


@torch.fx.wrap  # a leaf for FX tracing: the chunk loop depends on the input's size
def _concat_attention(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, chunk_size: Optional[int]) -> torch.Tensor:
    """y_i = 1/M sum_j ReLU(a_i + b_j) g_j for a (B, N), b (B, M), g (B, e, M) -> (B, e, N), at least float32.

    Eager, scripted and compiled calls process the queries ``chunk_size`` at a time (default: 2**24
    pairwise weights per chunk), so at most (B, M, chunk_size) pairwise weights exist at once. Under
    ``torch.jit.trace`` (the TorchScript-based ONNX exporter) and ``torch.export`` (the dynamo ONNX
    exporter), where a size-dependent loop would be unrolled or specialised to the example input, the
    sort-based ``_concat_sorted`` computes the same sums. The sums are in float32 for half inputs.
    """
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            return _concat_sorted(a, b, g)
    return _concat_chunked(a, b, g, chunk_size)


class NonLocal(nn.Module):
    """Non-local block over ``spatial_dims`` = 1, 2 or 3 spatial dimensions (Wang et al., CVPR 2018).

    ``z = x + norm(W_z(y))`` where ``y_i = sum_j f(x_i, x_j) g(x_j) / C(x)``; see the module docstring for
    the four pairwise functions. Input (N, C, L), (N, C, H, W) or (N, C, T, H, W); output of the same shape.

    Args:
        channels: input and output channels C.
        spatial_dims: 1, 2 or 3 (use :class:`NonLocal1d`, :class:`NonLocal2d`, :class:`NonLocal3d`).
        mode: ``'gaussian'``, ``'embedded_gaussian'`` (default, the paper's main variant),
            ``'dot_product'`` or ``'concatenation'``.
        rd_ratio: inner width of theta, phi and g as a fraction of C (default 0.5, the paper's C/2);
            the width is ``max(1, int(C * rd_ratio))``.
        rd_channels: inner width, overriding ``rd_ratio``.
        sub_sample: max-pool the *outputs* of phi and g (kernel = stride = 2 in 1D, 2x2 in 2D, 1x2x2 in
            3D, no padding, floor mode) so there are ~4x fewer key positions in 2D/3D, as mmcv and
            AlexHex7/Non-local_pytorch do. The official Caffe2 code pools the *input* before phi and g;
            with a bias-carrying linear map in between the two are not equivalent. Every pooled spatial
            size must be at least its kernel.
        use_scale: divide the embedded-Gaussian logits by sqrt(inner) (default True, as the official
            Caffe2 config's USE_SCALE=True and mmcv; keeps the softmax from saturating at large inner
            widths). Only affects ``'embedded_gaussian'``.
        norm_layer: norm after W_z: ``'batchnorm'`` (default, BatchNorm1d/2d/3d to match
            ``spatial_dims``), a callable ``norm_layer(channels, device=..., dtype=...)``, or None (no norm).
        chunk_size: query positions per chunk in ``'concatenation'`` mode; None (default) picks the
            largest chunk with at most 2**24 pairwise weights per chunk.
        device, dtype: factory kwargs of every parameter and buffer.
    """

    def __init__(
            self,
            channels: int,
            *,
            spatial_dims: int = 2,
            mode: str = 'embedded_gaussian',
            rd_ratio: float = 0.5,
            rd_channels: Optional[int] = None,
            sub_sample: bool = False,
            use_scale: bool = True,
            norm_layer: Union[str, Callable[..., nn.Module], None] = 'batchnorm',
            chunk_size: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        check_positive_int('channels', channels)
        check_positive_int('spatial_dims', spatial_dims)
        check_choice('spatial_dims', spatial_dims, (1, 2, 3))
        if not isinstance(mode, str):
            raise TypeError(f'mode must be a str, one of {list(_MODES)}, got {type(mode).__name__} ({mode!r})')
        check_choice('mode', mode, _MODES)
        for name, flag in (('sub_sample', sub_sample), ('use_scale', use_scale)):
            if not isinstance(flag, bool):
                raise TypeError(f'{name} must be a bool, got {type(flag).__name__} ({flag!r})')
        if chunk_size is not None:
            check_positive_int('chunk_size', chunk_size)
        inner = self._inner_channels(channels, rd_ratio, rd_channels)

        self.channels = channels
        self.spatial_dims = spatial_dims
        self.mode = mode
        self.inner_channels = inner
        self.sub_sample = sub_sample
        self.use_scale = use_scale
        self.chunk_size = chunk_size
        # Logit multiplier handed to SDPA: a division by sqrt(inner), never a multiplication (mmdet #1447).
        self.scale = 1.0 / math.sqrt(inner) if (mode == 'embedded_gaussian' and use_scale) else 1.0
        self._block_name = type(self).__name__
        self._pool_kernel: List[int] = list(_POOL_KERNEL[spatial_dims])

        conv = _CONV[spatial_dims]
        self.g = conv(channels, inner, 1, **dd)
        if mode == 'gaussian':
            # f(x_i, x_j) = exp(x_i^T x_j): no embedding, the raw input is both query and key.
            self.theta = nn.Identity()
            self.phi = nn.Identity()
        else:
            self.theta = conv(channels, inner, 1, **dd)
            self.phi = conv(channels, inner, 1, **dd)
        # w_f of Eq. 7, a (2 * inner -> 1) 1x1 projection without bias; only in 'concatenation' mode.
        self.concat_project: Optional[nn.Module] = (
            conv(2 * inner, 1, 1, bias=False, **dd) if mode == 'concatenation' else None)
        if sub_sample:
            kernel = tuple(self._pool_kernel) if spatial_dims > 1 else self._pool_kernel[0]
            self.pool = _MAXPOOL[spatial_dims](kernel_size=kernel, stride=kernel)
        else:
            self.pool = nn.Identity()

        if isinstance(norm_layer, str):
            check_choice('norm_layer', norm_layer, ('batchnorm',))
            norm_layer = _BATCHNORM[spatial_dims]
        elif norm_layer is not None and not callable(norm_layer):
            raise TypeError(f"norm_layer must be 'batchnorm', a callable or None, got {norm_layer!r}")
        self.conv_out = conv(inner, channels, 1, bias=norm_layer is None, **dd)
        self.norm = norm_layer(channels, **dd) if norm_layer is not None else nn.Identity()
        self.reset_parameters()

    @staticmethod
    def _inner_channels(channels: int, rd_ratio: float, rd_channels: Optional[int]) -> int:
        if rd_channels is not None:
            return resolve_rd_channels(channels, rd_ratio, rd_channels)
        if rd_ratio is None or isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)):
            raise TypeError(f'rd_ratio must be a positive number, got {rd_ratio!r}')
        if not math.isfinite(rd_ratio) or rd_ratio <= 0:
            raise ValueError(f'rd_ratio must be a finite number > 0, got {rd_ratio}')
        # The paper's inner width is C/2; unlike GC's bottleneck it is clamped to >= 1 instead of refused.
        return max(1, int(channels * rd_ratio))

    def reset_parameters(self) -> None:
        """Official init: every 1x1 conv ~ N(0, 0.01^2) with zero bias; then the residual branch is zeroed.

        With a norm layer its weight and bias are set to 0 (the paper's "BN initialised to zero", the
        official BN_INIT_GAMMA=0); without one (or with a norm that has no affine weight) W_z's weight and
        bias are set to 0. Either way ``norm(W_z(y)) == 0`` exactly, so the block is the identity when it
        is inserted into a pretrained network. Models must call this again after timm's ``init_weights``,
        which re-initialises every Conv2d.
        """
        convs: List[nn.Module] = [self.g, self.theta, self.phi, self.conv_out]
        if self.concat_project is not None:
            convs.append(self.concat_project)
        for m in convs:
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.normal_(m.weight, std=_INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        reset = getattr(self.norm, 'reset_parameters', None)
        if callable(reset):
            reset()
        weight = getattr(self.norm, 'weight', None)
        if isinstance(weight, torch.Tensor):
            nn.init.zeros_(weight)
            bias = getattr(self.norm, 'bias', None)
            if isinstance(bias, torch.Tensor):
                nn.init.zeros_(bias)
        else:
            nn.init.zeros_(self.conv_out.weight)
            if self.conv_out.bias is not None:
                nn.init.zeros_(self.conv_out.bias)

    def _check_pool_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_scripting():
            if is_fx_symbolic_tracing():  # shapes are proxies while FX traces; nothing to check
                return
            if torch.jit.is_tracing():  # reads the example's sizes, records nothing: no TracerWarnings
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore', torch.jit.TracerWarning)
                    self._check_pool_sizes(x)
                return
        self._check_pool_sizes(x)

    def _check_pool_sizes(self, x: torch.Tensor) -> None:
        if self.sub_sample:
            for i in range(self.spatial_dims):
                if x.shape[2 + i] < self._pool_kernel[i]:
                    raise ValueError(
                        f'{self._block_name}: sub_sample=True max-pools with kernel {self._pool_kernel}, '
                        f'so every spatial size must be at least that; got input shape {list(x.shape)}')

    def _chunk(self, batch: int, num_keys: int) -> int:
        return _resolve_chunk(self.chunk_size, batch, num_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, self.spatial_dims + 2, self._block_name)
        self._check_pool_input(x)
        spatial = x.shape[2:]

        theta = self.theta(x).flatten(2)  # (B, d, N)
        phi = self.pool(self.phi(x)).flatten(2)  # (B, d, M)
        g = self.pool(self.g(x)).flatten(2)  # (B, inner, M)

        if self.mode == 'gaussian' or self.mode == 'embedded_gaussian':
            # one head: (B, 1, N, d), the 4-D layout SDPA's fused kernels and the ONNX exporters take
            y = _attention.softmax_attention(
                theta.transpose(1, 2).unsqueeze(1), phi.transpose(1, 2).unsqueeze(1), g.transpose(1, 2).unsqueeze(1),
                self.scale)
            y = y.squeeze(1).transpose(1, 2)  # (B, inner, N)
        elif self.mode == 'dot_product':
            # sum_j (theta_i . phi_j) g_j / M = (g phi^T / M) theta: O(N inner^2), no (N, M) matrix; the
            # sums over M and over inner are taken in float32 (they overflow float16 long before y does).
            gp = _attention.matmul_float32(g, phi.transpose(1, 2)) / phi.shape[2]
            y = _attention.matmul_float32(gp, theta)
        else:  # concatenation
            y = theta  # placeholder so TorchScript sees y defined on every path
            proj = self.concat_project
            if proj is not None:
                a, b = self._concat_terms(proj.weight, theta, phi)
                y = _concat_attention(a, b, g, self.chunk_size)
        y = y.unflatten(2, spatial)
        return x + self._project(y, g.dtype)

    def _project(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """norm(W_z y), with y cast to the branch's working ``dtype``.

        In the dot-product and concatenation modes y arrives in float32 for half inputs: it is a sum
        that grows like |x|^3 or |x|^2 (no softmax bounds it by g), so under autocast W_z and the norm
        run on it in float32 too. Otherwise a float16 W_z could overflow to inf, and a zero-initialised
        norm (the identity at init) would turn inf * 0 into NaN.
        """
        if not torch.jit.is_scripting():
            if not is_fx_symbolic_tracing() and y.dtype != dtype and _attention.autocast_on(y.device.type):
                with torch.autocast(y.device.type, enabled=False):
                    return self.norm(self.conv_out(y.to(self.conv_out.weight.dtype)))
        return self.norm(self.conv_out(y.to(dtype)))

    def _concat_terms(
            self, w: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """w_f^T [theta_i, phi_j] = a_i + b_j with a = w_theta^T theta (B, N) and b = w_phi^T phi (B, M)."""
        w = w.reshape(1, 1, 2 * self.inner_channels)
        a = _attention.matmul_float32(w[:, :, :self.inner_channels], theta).squeeze(1)
        b = _attention.matmul_float32(w[:, :, self.inner_channels:], phi).squeeze(1)
        return a, b

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Normalised pairwise weights f(x_q, x_j) / C(x) of the query positions ``queries``.

        Args:
            x: input as for ``forward``.
            queries: 1-D integer tensor of indices into the row-major flattened input positions
                (default: the centre position).

        Returns:
            ``{'query': (B, K, *key_spatial)}`` where ``key_spatial`` is phi's (sub-sampled) spatial shape.
            In the softmax modes each row sums to 1; in every mode ``y_q = sum_j row_j g_j`` is what
            ``forward`` applies. Only the K rows are computed.
        """
        check_input(x, self.channels, self.spatial_dims + 2, self._block_name)
        self._check_pool_input(x)
        spatial = list(x.shape[2:])
        queries = query_index(queries, spatial, x.device)

        theta = self.theta(x).flatten(2)[:, :, queries]  # (B, d, K)
        phi_map = self.pool(self.phi(x))
        key_spatial = list(phi_map.shape[2:])
        phi = phi_map.flatten(2)  # (B, d, M)
        num_keys = phi.shape[2]
        if self.mode in ('gaussian', 'embedded_gaussian'):
            rows = torch.softmax(_attention.matmul_float32(theta.transpose(1, 2), phi) * self.scale, dim=-1)
        elif self.mode == 'dot_product':
            rows = _attention.matmul_float32(theta.transpose(1, 2), phi) / num_keys
        else:
            a, b = self._concat_terms(self.concat_project.weight, theta, phi)
            rows = torch.relu(a[:, :, None] + b[:, None, :]) / num_keys
        rows = rows.to(x.dtype)  # computed in float32 for half inputs, returned in the input's dtype
        return {'query': rows.reshape([x.shape[0], queries.numel()] + key_spatial)}

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, inner_channels={self.inner_channels}, mode={self.mode!r}, '
                f'sub_sample={self.sub_sample}, use_scale={self.use_scale}')


class NonLocal1d(NonLocal):
    """Non-local block on (N, C, L) inputs; takes :class:`NonLocal`'s keyword arguments."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(channels, spatial_dims=1, **kwargs)


class NonLocal2d(NonLocal):
    """Non-local block on (N, C, H, W) inputs; takes :class:`NonLocal`'s keyword arguments."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(channels, spatial_dims=2, **kwargs)


class NonLocal3d(NonLocal):
    """Non-local block on (N, C, T, H, W) inputs; takes :class:`NonLocal`'s keyword arguments."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(channels, spatial_dims=3, **kwargs)
