"""The attention formulas of the papers, written out naively: the references the modules are tested against
(``tests/heads/test_danet.py``, ``test_ccnet.py``, ``test_flanet.py``) and timed against (``bench/attention.py``).

Each takes the module under test for its weights only (projections, ``gamma``, priors) and computes the formula
directly, holding the full maps: (N, N) for PAM and criss-cross, (C, C) for CAM and per line for FLA. Energies,
softmax and aggregation run in fp32 with autocast off (the modules' precision contract); the result has the input's
dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnseg.heads import ChannelAttention, CrissCrossAttention, FullyAttentionalBlock, PositionAttention


def fp32(x: torch.Tensor) -> torch.autocast:
    """Autocast off, for energies, softmax and aggregation in fp32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def naive_pam(m: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    """DANet PAM: ``x + gamma * V softmax(Q^T K)^T`` with the (N, N) map."""
    q, k, v = (p(x).flatten(2).float() for p in (m.query, m.key, m.value))  # (B, C', N), (B, C', N), (B, C, N)
    with fp32(x):
        s = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, N, N)
        return (m.gamma * torch.bmm(v, s.transpose(1, 2)).view(x.shape) + x.float()).to(x.dtype)


def naive_cam(m: ChannelAttention, x: torch.Tensor, energy: str | None = None) -> torch.Tensor:
    """DANet CAM: ``A + gamma * softmax(E) A`` with ``E = A A^T`` (``plain``) or ``max(E) - E`` (``max_minus``)."""
    energy = energy or m.energy
    with fp32(x):
        a = x.flatten(2).float()  # (B, C, N)
        e = torch.bmm(a, a.transpose(1, 2))  # (B, C, C)
        if energy == "max_minus":
            e = e.max(dim=-1, keepdim=True)[0].expand_as(e) - e
        return (m.gamma * torch.bmm(torch.softmax(e, dim=-1), a) + a).view(x.shape).to(x.dtype)


_MASKS: dict = {}


def criss_cross_mask(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) bool: position i sees position j when they share a row or a column, itself once (cached)."""
    key = (h, w, str(device))
    if key not in _MASKS:
        rows = torch.arange(h, device=device).repeat_interleave(w)  # row of each position, row-major
        cols = torch.arange(w, device=device).repeat(h)
        _MASKS.clear()
        _MASKS[key] = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])
    return _MASKS[key]


def clear_masks() -> None:
    """Free the cached criss-cross mask (benchmarks call it between sizes)."""
    _MASKS.clear()


def criss_cross_weights(m: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """The full attention (B, N, N) restricted to each position's row and column: one softmax over H + W - 1."""
    q, k = m.query(x).flatten(2).float(), m.key(x).flatten(2).float()
    with fp32(x):
        energy = torch.bmm(q.transpose(1, 2), k)  # (B, N, N)
        return torch.softmax(energy.masked_fill(~criss_cross_mask(*x.shape[-2:], x.device), float("-inf")), dim=-1)


def masked_cca(m: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """CCNet criss-cross attention as masked full attention: ``x + gamma * V A^T``."""
    v = m.value(x).flatten(2).float()  # (B, C, N)
    weights = criss_cross_weights(m, x)
    with fp32(x):
        return (m.gamma * torch.bmm(v, weights.transpose(1, 2)).view(x.shape) + x.float()).to(x.dtype)


def einsum_cca(m: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """CCNet criss-cross attention with einsums over rows and columns (the official code's form, in PyTorch)."""
    h = x.shape[2]
    q, k, v = (p(x).float() for p in (m.query, m.key, m.value))
    with fp32(x):
        centre = torch.diag(torch.full((h,), float("-inf"), device=x.device))  # (H, G): -inf where g == h
        energy_col = torch.einsum("bchw,bcgw->bhwg", q, k) + centre[:, None, :]  # (B, H, W, H)
        energy_row = torch.einsum("bchw,bchv->bhwv", q, k)  # (B, H, W, W)
        attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
        out_col = torch.einsum("bhwg,bcgw->bchw", attention[..., :h], v)
        out_row = torch.einsum("bhwv,bchv->bchw", attention[..., h:], v)
        return (m.gamma * (out_col + out_row) + x.float()).to(x.dtype)


def naive_fla_augment(m: FullyAttentionalBlock, x: torch.Tensor) -> torch.Tensor:
    """FLANet's ``aug_h + aug_w`` with one explicit C x C softmax per column and per row of each image (fp32)."""
    with fp32(x):
        x = x.float()
        out = torch.zeros_like(x)
        for b in range(x.shape[0]):
            prior_h = m.prior_h(x[b].mean(dim=2).T)  # (H, C) from the width-pooled image
            prior_w = m.prior_w(x[b].mean(dim=1).T)  # (W, C) from the height-pooled image
            for w in range(x.shape[3]):
                column = x[b, :, :, w]  # (C, H)
                out[b, :, :, w] += torch.softmax(column @ prior_h, dim=1) @ column
            for h in range(x.shape[2]):
                row = x[b, :, h, :]  # (C, W)
                out[b, :, h, :] += torch.softmax(row @ prior_w, dim=1) @ row
        return out


def naive_fla(m: FullyAttentionalBlock, x: torch.Tensor) -> torch.Tensor:
    """The whole block from the per-line loops: ``fuse(gamma * (aug_h + aug_w) + x)``."""
    with fp32(x):
        y = (m.gamma * naive_fla_augment(m, x) + x.float()).to(x.dtype)
    return m.fuse(y)


def published_fla(m: FullyAttentionalBlock, x: torch.Tensor) -> torch.Tensor:
    """The published block's attention (priors tiled with ``repeat``, batched ``bmm``), without its final 3x3 conv:
    index ``b * W + w`` meets prior ``(b * W + w) % B``, so images of a batch mix (equal to ours for batch 1)."""
    b, c, h, w = x.shape
    dtype = x.dtype
    with fp32(x):
        x = x.float()
        cols = x.permute(0, 3, 1, 2).reshape(b * w, c, h)
        rows = x.permute(0, 2, 1, 3).reshape(b * h, c, w)
        prior_h = m.prior_h(F.avg_pool2d(x, [1, w]).view(b, c, h).permute(0, 2, 1))
        prior_w = m.prior_w(F.avg_pool2d(x, [h, 1]).view(b, c, w).permute(0, 2, 1))
        aug_h = torch.bmm(torch.softmax(torch.bmm(cols, prior_h.repeat(w, 1, 1)), -1), cols)
        aug_w = torch.bmm(torch.softmax(torch.bmm(rows, prior_w.repeat(h, 1, 1)), -1), rows)
        aug = aug_h.view(b, w, c, h).permute(0, 2, 3, 1) + aug_w.view(b, h, c, w).permute(0, 2, 1, 3)
        return (m.gamma * aug + x).to(dtype)


def criss_cross_mask_3d(t: int, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) bool over a clip's N = T H W positions (frame-major): i sees j when they share frame and row, frame
    and column, or row and column (the same pixel in another frame); itself once."""
    frame = torch.arange(t, device=device).repeat_interleave(h * w)
    row = torch.arange(h, device=device).repeat_interleave(w).repeat(t)
    col = torch.arange(w, device=device).repeat(t * h)

    def same(a):
        return a[:, None] == a[None, :]

    return (same(frame) & same(row)) | (same(frame) & same(col)) | (same(row) & same(col))


def masked_cca_3d(m, x: torch.Tensor) -> torch.Tensor:
    """3D criss-cross attention (CCNet, TPAMI section 3.5) as masked full attention over the clip's positions:
    ``x + gamma * V softmax(Q^T K masked)^T``, with the (N, N) map (B, C, T, H, W)."""
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    q, k, v = (p(frames).float().reshape(b, t, -1, h * w).transpose(1, 2).flatten(2) for p in (m.query, m.key, m.value))
    with fp32(x):
        energy = torch.bmm(q.transpose(1, 2), k).masked_fill(~criss_cross_mask_3d(t, h, w, x.device), float("-inf"))
        out = torch.bmm(v, torch.softmax(energy, dim=-1).transpose(1, 2))  # (B, C, N), N frame-major
        return (m.gamma * out.reshape(b, c, t, h, w) + x.float()).to(x.dtype)


def einsum_cca_3d(m, x: torch.Tensor) -> torch.Tensor:
    """3D criss-cross attention written with einsums on the (B, C, T, H, W) layout: energies along the row, the
    column and the time line of every position, -inf on the centre of the column and time lines (counted once,
    in the row), one softmax over their concatenation, einsum aggregation of the values."""
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    q, k, v = (p(frames).float().reshape(b, t, -1, h, w).transpose(1, 2) for p in (m.query, m.key, m.value))
    with fp32(x):
        row = torch.einsum("bcthw,bcthv->bthwv", q, k)

        def centre(n):
            return torch.diag(torch.full((n,), float("inf"), device=x.device))

        col = torch.einsum("bcthw,bctgw->bthwg", q, k) - centre(h)[:, None, :]  # (H, G) on dims 2 and 4
        time = torch.einsum("bcthw,bcshw->bthws", q, k) - centre(t)[:, None, None, :]  # (T, S) on dims 1 and 4
        weights = torch.softmax(torch.cat([row, col, time], dim=-1), dim=-1)
        a_row, a_col, a_time = weights.split([w, h, t], dim=-1)
        out = (
            torch.einsum("bthwv,bcthv->bcthw", a_row, v)
            + torch.einsum("bthwg,bctgw->bcthw", a_col, v)
            + torch.einsum("bthws,bcshw->bcthw", a_time, v)
        )
        return (m.gamma * out + x.float()).to(x.dtype)
