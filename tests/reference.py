"""A plain float64 reference for softmaxce, written from the README's definition
("The loss") alone.

Everything here loops over rows (or uses elementary NumPy on one row) in float64, so that it
shares no code and no trick with the library. The fused gradient is written by its closed
formula, never by finite differences.

Conventions (README.md, "The loss"):
    z      = softcap * tanh(x / softcap)                  (or x)
    A_i    = allowed classes of row i (``where``)
    lse_i  = log sum_{c in A_i} exp(z_ic)
    q_i    = (1 - eps) y_i + eps / |A_i| on A_i          (y: one-hot or the soft target)
    L_i    = sum_c w_c q_ic (lse_i - z_ic) [+ sum_c w_c q_ic log q_ic] + z_loss lse_i**2
    W      = sum_i v_i sum_c w_c y_ic                     (mean denominator; 0 -> loss 0)
    dL/dz  = (sum_k w_k q_ik) p_ic - w_c q_ic + 2 z_loss lse_i p_ic
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "TOLERANCES",
    "WORST_ERRORS",
    "cross_entropy",
    "cross_entropy_vjp",
    "log_softmax",
    "log_softmax_vjp",
    "logsumexp",
    "numgrad",
    "record_error",
    "softmax",
    "softmax_cross_entropy",
    "softmax_jacobian",
    "softmax_vjp",
]


# ---------------------------------------------------------------------------------------------
# one row at a time
# ---------------------------------------------------------------------------------------------


def _row_parts(z, allowed):
    """(m, log_s) with lse = m + log_s for a 1-D float64 row, by a max shift.

    m is the largest allowed entry and log_s = log1p(sum of exp(z_c - m) over the other allowed
    entries), so that log_softmax at the maximum, -log_s, keeps full relative accuracy even
    when it is tiny. Returns (-inf, 0) for a row with no allowed entry or only -inf entries.
    """
    vals = [float(v) for v, a in zip(z, allowed, strict=True) if a]
    if not vals or max(vals) == -math.inf:
        return -math.inf, 0.0
    k = int(np.argmax(vals))
    m = vals[k]
    rest = math.fsum(math.exp(v - m) for i, v in enumerate(vals) if i != k)
    return m, math.log1p(rest)


def _row_lse(z, allowed):
    m, log_s = _row_parts(z, allowed)
    return m + log_s


def _row_log_softmax(z, allowed):
    m, log_s = _row_parts(z, allowed)
    out = np.full(len(z), -math.inf)
    if m == -math.inf:
        return out
    for c in range(len(z)):
        if allowed[c]:
            out[c] = (float(z[c]) - m) - log_s
    return out


def _row_softmax(z, allowed):
    out = _row_log_softmax(z, allowed)
    return np.array([math.exp(v) for v in out])


# ---------------------------------------------------------------------------------------------
# helpers for the class axis
# ---------------------------------------------------------------------------------------------


def _rows(x, axis):
    """float64 copy of x with the class axis last, and the batch shape."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    return x, x.shape[:-1]


def _where_rows(where, shape, axis):
    if where is None:
        w = np.ones(shape, dtype=bool)
    else:
        w = np.broadcast_to(np.asarray(where, dtype=bool), shape)
    return np.moveaxis(w, axis, -1)


def _apply_rowwise(x, axis, where, fn):
    xr, batch = _rows(x, axis)
    wr = _where_rows(where, np.shape(x), axis)
    out = np.empty(xr.shape)
    for idx in np.ndindex(batch):
        out[idx] = fn(xr[idx], wr[idx])
    return np.moveaxis(out, -1, axis)


# ---------------------------------------------------------------------------------------------
# softmax family
# ---------------------------------------------------------------------------------------------


def softmax(x, axis=-1, where=None):
    return _apply_rowwise(x, axis, where, _row_softmax)


def log_softmax(x, axis=-1, where=None):
    return _apply_rowwise(x, axis, where, _row_log_softmax)


def logsumexp(x, axis=-1, keepdims=False, where=None):
    xr, batch = _rows(x, axis)
    wr = _where_rows(where, np.shape(x), axis)
    out = np.empty(batch)
    for idx in np.ndindex(batch):
        out[idx] = _row_lse(xr[idx], wr[idx])
    if keepdims:
        out = np.expand_dims(out, axis)
    return out


def softmax_vjp(y, dy, axis=-1):
    """dx_j = sum_i dy_i dy_i/dx_j = y_j (dy_j - sum_i y_i dy_i), row by row."""
    yr, batch = _rows(y, axis)
    dr, _ = _rows(dy, axis)
    out = np.empty(yr.shape)
    for idx in np.ndindex(batch):
        yy, dd = yr[idx], dr[idx]
        s = sum(float(a) * float(b) for a, b in zip(yy, dd, strict=True))
        out[idx] = [float(a) * (float(b) - s) for a, b in zip(yy, dd, strict=True)]
    return np.moveaxis(out, -1, axis)


def log_softmax_vjp(logp, dy, axis=-1):
    """dx_j = dy_j - exp(logp_j) sum_i dy_i."""
    lr, batch = _rows(logp, axis)
    dr, _ = _rows(dy, axis)
    out = np.empty(lr.shape)
    for idx in np.ndindex(batch):
        s = sum(float(b) for b in dr[idx])
        pairs = zip(lr[idx], dr[idx], strict=True)
        out[idx] = [float(b) - math.exp(float(a)) * s for a, b in pairs]
    return np.moveaxis(out, -1, axis)


def softmax_jacobian(y, axis=-1):
    """J[..., i, ..., j] = d y_i / d x_j = y_i ([i == j] - y_j); i at ``axis``, j trailing."""
    y = np.asarray(y, dtype=np.float64)
    axis = axis % y.ndim
    C = y.shape[axis]
    out = np.empty((*y.shape, C))
    for idx in np.ndindex(y.shape):
        i = idx[axis]
        for j in range(C):
            jdx = list(idx)
            jdx[axis] = j
            yj = y[tuple(jdx)]
            out[(*idx, j)] = y[idx] * ((1.0 if i == j else 0.0) - yj)
    return out


# ---------------------------------------------------------------------------------------------
# targets, weights, reductions
# ---------------------------------------------------------------------------------------------


def _is_index(target):
    return np.issubdtype(np.asarray(target).dtype, np.integer)


def _target_rows(target, x_shape, axis):
    """Returns (kind, rows): 'index' with an int array of the batch shape, or 'soft' with a
    float64 array whose class axis is last."""
    t = np.asarray(target)
    if _is_index(t):
        return "index", t.astype(np.int64)
    return "soft", np.moveaxis(t.astype(np.float64), axis, -1)


def _reduce(losses, W, reduction):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return float(np.sum(losses))
    if reduction == "mean":
        return 0.0 if W == 0 else float(np.sum(losses)) / W
    raise AssertionError(reduction)


def _row_scale(batch, W, reduction, dloss):
    """Gradient multiplier per position: dloss, dloss / W, or the per-position dloss."""
    if reduction == "none":
        d = np.ones(batch) if dloss is None else np.asarray(dloss, dtype=np.float64)
        assert d.shape == batch
        return d
    d = 1.0 if dloss is None else float(dloss)
    if reduction == "mean":
        d = 0.0 if W == 0 else d / W
    return np.full(batch, d)


# ---------------------------------------------------------------------------------------------
# cross-entropy on probabilities
# ---------------------------------------------------------------------------------------------


def _ce_rows(probs, target, axis, weight, ignore_index):
    pr, batch = _rows(probs, axis)
    C = pr.shape[-1]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    kind, tr = _target_rows(target, np.shape(probs), axis)
    qs = np.zeros(pr.shape)
    valid = np.ones(batch, dtype=bool)
    for idx in np.ndindex(batch):
        if kind == "index":
            t = int(tr[idx])
            if t == ignore_index:
                valid[idx] = False
                continue
            qs[idx][t] = 1.0
        else:
            qs[idx] = tr[idx]
    return pr, qs, valid, w, batch


def cross_entropy(probs, target, axis=-1, weight=None, ignore_index=-100, reduction="mean"):
    pr, qs, valid, w, batch = _ce_rows(probs, target, axis, weight, ignore_index)
    losses = np.zeros(batch)
    W = 0.0
    for idx in np.ndindex(batch):
        if not valid[idx]:
            continue
        L = 0.0
        for c in range(pr.shape[-1]):
            qc = qs[idx][c]
            if qc != 0.0:
                pc = pr[idx][c]
                L -= w[c] * qc * (math.log(pc) if pc > 0 else -math.inf)
        losses[idx] = L
        W += float(np.dot(w, qs[idx]))
    return _reduce(losses, W, reduction)


def cross_entropy_vjp(probs, target, dloss=None, axis=-1, weight=None, ignore_index=-100,
                      reduction="mean"):
    pr, qs, valid, w, batch = _ce_rows(probs, target, axis, weight, ignore_index)
    W = sum(float(np.dot(w, qs[idx])) for idx in np.ndindex(batch) if valid[idx])
    scale = _row_scale(batch, W, reduction, dloss)
    out = np.zeros(pr.shape)
    for idx in np.ndindex(batch):
        if not valid[idx]:
            continue
        for c in range(pr.shape[-1]):
            if qs[idx][c] != 0.0:
                out[idx][c] = -scale[idx] * w[c] * qs[idx][c] / pr[idx][c]
    return np.moveaxis(out, -1, axis)


# ---------------------------------------------------------------------------------------------
# the fused loss and its gradient
# ---------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, target, axis=-1, weight=None, ignore_index=-100,
                          reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                          where=None, soft_target_loss="cross-entropy", dloss=None):
    """Returns (loss, dlogits) in float64; loss is a float or an array of the batch shape."""
    xr, batch = _rows(logits, axis)
    C = xr.shape[-1]
    wr = _where_rows(where, np.shape(logits), axis)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    kind, tr = _target_rows(target, np.shape(logits), axis)
    eps = float(label_smoothing)
    kl = soft_target_loss == "kl-divergence"

    losses = np.zeros(batch)
    grads = np.zeros(xr.shape)
    W = 0.0
    for idx in np.ndindex(batch):
        allowed = wr[idx]
        nA = int(np.count_nonzero(allowed))
        if kind == "index":
            t = int(tr[idx])
            if t == ignore_index:
                continue
            y = np.zeros(C)
            y[t] = 1.0
        else:
            y = tr[idx]
        if nA == 0:
            continue  # an empty row counts like an ignored one
        W += float(np.dot(w, y))

        x = xr[idx]
        if softcap is not None:
            z = np.array([softcap * math.tanh(float(v) / softcap) for v in x])
        else:
            z = x.copy()
        lse = _row_lse(z, allowed)
        p = _row_softmax(z, allowed)
        logp = _row_log_softmax(z, allowed)
        q = np.array([(1.0 - eps) * y[c] + (eps / nA if allowed[c] else 0.0) for c in range(C)])

        L = 0.0
        for c in range(C):
            if q[c] != 0.0:
                L -= w[c] * q[c] * logp[c]  # +inf when logp[c] = -inf
                if kl and q[c] > 0:
                    L += w[c] * q[c] * math.log(q[c])
        L += z_loss * lse * lse
        losses[idx] = L

        S = float(np.dot(w, q))
        g = np.zeros(C)
        for c in range(C):
            if allowed[c]:
                g[c] = S * p[c] - w[c] * q[c] + 2.0 * z_loss * lse * p[c]
                if softcap is not None:  # 1 / cosh(u)**2, without 1 - tanh(u)**2's cancellation
                    e = math.exp(-2.0 * abs(float(x[c]) / softcap))
                    g[c] *= 4.0 * e / (1.0 + e) ** 2
        grads[idx] = g

    loss = _reduce(losses, W, reduction)
    scale = _row_scale(batch, W, reduction, dloss)
    grads *= scale[..., None]
    return loss, np.moveaxis(grads, -1, axis)


# ---------------------------------------------------------------------------------------------
# an independent finite-difference gradient
# ---------------------------------------------------------------------------------------------


def numgrad(f, x, eps=1e-6):
    """Central differences of a scalar function f at x (float64), one coordinate at a time."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        fp = float(f(x.copy()))
        x[idx] = old - eps
        fm = float(f(x.copy()))
        x[idx] = old
        g[idx] = (fp - fm) / (2.0 * eps)
    return g


# ---------------------------------------------------------------------------------------------
# bookkeeping: the worst error seen against this reference (printed by conftest.py)
# ---------------------------------------------------------------------------------------------

# (atol, rtol) per input dtype for comparisons against the float64 reference. float16 is
# computed in float32 and rounded once to float16 (half an ulp is 4.9e-4 relative); float32
# accumulates in float32 (ulp 1.2e-7); float64 should be within a few ulps of the reference.
TOLERANCES = {
    np.dtype(np.float16): (1e-6, 6e-4),
    np.dtype(np.float32): (2e-6, 2e-5),
    np.dtype(np.float64): (1e-12, 1e-10),
}

# worst errors seen vs the float64 reference, by dtype and quantity; printed at the end.
WORST_ERRORS: dict[tuple[str, str], tuple[float, str]] = {}


def record_error(dtype, what, actual, expected, where=""):
    """Record max relative error of ``actual`` vs ``expected``.

    For losses (and forward values) the error is element-wise relative (entries with
    |expected| > 1e-300), and also relative to max(|expected|, 1); for
    gradients it is norm-wise, max|diff| / max|expected|, since gradient entries cancel
    (p - 1) and have no meaningful element-wise relative error near 0.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    fin = np.isfinite(e) & np.isfinite(a)
    if not fin.any():
        return
    a, e = a[fin], e[fin]
    if what == "loss":
        nz = np.abs(e) > 1e-300
        if not nz.any():
            return
        err = float(np.max(np.abs(a[nz] - e[nz]) / np.abs(e[nz])))
        # also relative to max(|ref|, 1): tiny losses (p_target ~ 1) have no relative accuracy
        # in float32 unless computed with log1p, so report both
        err1 = float(np.max(np.abs(a - e) / np.maximum(np.abs(e), 1.0)))
        key1 = (np.dtype(dtype).name, "loss/max(|ref|,1)")
        if key1 not in WORST_ERRORS or err1 > WORST_ERRORS[key1][0]:
            WORST_ERRORS[key1] = (err1, where)
    else:
        scale = float(np.max(np.abs(e)))
        if scale == 0:
            return
        err = float(np.max(np.abs(a - e))) / scale
    key = (np.dtype(dtype).name, what)
    if key not in WORST_ERRORS or err > WORST_ERRORS[key][0]:
        WORST_ERRORS[key] = (err, where)
