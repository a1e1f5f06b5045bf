"""The formulas of softmaxce, written once.

Everything else (the public functions, the ops objects, the compat modes, the kernels' callers)
validates and reshapes, then calls into this module. Nothing here validates user input and
nothing here imports from the rest of the package.

Numerics (the derivation, once):

* Shift by the row maximum ``m``: ``logsumexp(z) = m + log(sum(exp(z - m)))``. Every
  ``exp(z - m) <= 1`` so nothing overflows, and the largest term is exactly 1, so the sum is in
  ``[1, C]`` and its log is well conditioned. A row whose maximum is ``-inf`` (all entries
  ``-inf`` or all masked) would give ``-inf - -inf = NaN``; such a maximum is replaced by 0, as
  scipy.special.logsumexp does (Blanchard, Higham & Higham 2021). ``+inf`` and NaN maxima are
  left alone so that they propagate to NaN, as in every framework.
* Cross-entropy terms are formed from the *shifted* logits: ``lse - z_c = log(s) - (z_c - m)``.
  Both parts are small or exactly representable, so no large-magnitude cancellation happens
  (logits ``[0, 0, 1e6]`` with label 2 give exactly 0). The probabilities are never formed to
  take a log of them.
* Accumulation is at least float32: float16 input is computed in float32 and rounded once at
  the end; float64 stays float64.
* Gradient of ``L = sum_c w_c q_c (lse - z_c) + zeta * lse**2`` with respect to ``z``:
  ``dL/dz_c = (S + 2 zeta lse) p_c - w_c q_c`` with ``S = sum_k w_k q_k``. This is exact also
  when the target row does not sum to 1 (frameworks that use ``p - q`` assume it does). The
  per-row factors ``r (S + 2 zeta lse) / s`` and the z-loss terms are formed in float64 (a
  z_loss beyond the float32 range times ``lse = 0`` is 0, not ``inf * 0``).
* At a maximum class (``e_c = 1``, so ``s = 1 + rest``), ``S p_c - w_c q_c`` cancels for a
  confident row: ``fl(p_t) - 1 = 0`` for ``x = [40, 0, 0]`` where the gradient is -8.5e-18.
  There it is formed as ``((S - w_c q_c) + 2 zeta lse - w_c q_c rest) / s``, with ``rest`` and
  ``S - w_c q_c`` summed without that class's term: the same value, no cancellation. Index
  targets: at the target class t; soft targets (one-hot ones included): at the first maximum.
  (Elsewhere ``p_c <= 1/2``, or the difference is a genuine one of the target and ``p``.)
* With a softcap ``z = cap * tanh(x / cap)`` the chain rule multiplies by
  ``1 / cosh(x / cap)**2``, formed as ``4 e / (1 + e)**2`` with ``e = exp(-2 |x / cap|)``:
  ``1 - tanh**2`` loses every digit once tanh rounds to 1 (float32 ``|x / cap| > 9``). The
  public API rejects a ``softcap`` whose value or reciprocal is not a normal number of the
  accumulation dtype.
"""

from __future__ import annotations

import numpy as np

_ERRSTATE = {"divide": "ignore", "invalid": "ignore", "over": "ignore", "under": "ignore"}


def acc_dtype(dtype: np.dtype) -> np.dtype:
    """The accumulation dtype: at least float32."""
    return np.promote_types(dtype, np.float32)


def _row_max(z: np.ndarray, axis: int, where: np.ndarray | None) -> np.ndarray:
    """Row maximum with keepdims; ``-inf`` (empty or all ``-inf``) replaced by 0."""
    if where is None:
        m = np.max(z, axis=axis, keepdims=True)
    else:
        m = np.max(z, axis=axis, keepdims=True, where=where, initial=-np.inf)
    m[m == -np.inf] = 0.0
    return m


def _sum_without(a: np.ndarray, k: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a[k], sum of a without a[k])`` along ``axis``, keepdims; ``k`` holds one index per row.

    The sum of the others is summed as such (the entry is set aside, not subtracted), so it
    keeps its relative accuracy when it is tiny beside ``a[k]``.
    """
    top = np.take_along_axis(a, k, axis)
    np.put_along_axis(a, k, 0.0, axis)
    rest = a.sum(axis=axis, keepdims=True)
    np.put_along_axis(a, k, top, axis)
    return top, rest


def _sum_parts(e: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(k, top, rest)`` for ``e = exp(z - max z)``, keepdims: the index of the (first)
    largest term, that term (1 unless the row is all ``-inf``, masked or NaN), the others' sum."""
    k = np.expand_dims(np.argmax(e, axis=axis), axis)
    return (k, *_sum_without(e, k, axis))


def _log_of_sum(top: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """``log(top + rest)``: ``log1p(rest)`` when ``top == 1`` (see :func:`_log_sum`)."""
    return np.where(top == 1.0, np.log1p(rest), np.log(top + rest))


def _log_sum(e: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(s, log s)`` for ``s = sum(e)`` with keepdims, where ``e = exp(z - max z)``.

    The maximum contributes exactly 1, so ``log s = log1p(sum of the other terms)``, which keeps
    full relative accuracy when the others are tiny (a confident row's loss of 1e-9 is not
    rounded to 0; Blanchard, Higham & Higham 2021). Rows without a term equal to 1 (all
    ``-inf``, all masked, NaN) use ``log(s)``.
    """
    _, top, rest = _sum_parts(e, axis)
    return top + rest, _log_of_sum(top, rest)


def _shifted_exp(x: np.ndarray, axis: int, where: np.ndarray | None):
    """``(z - m, exp(z - m), sum, log sum, m)`` in the accumulation dtype; masked entries 0."""
    z = x.astype(acc_dtype(x.dtype))
    m = _row_max(z, axis, where)
    z -= m
    e = np.exp(z)
    if where is not None:
        e[~where] = 0.0
    s, log_s = _log_sum(e, axis)
    return z, e, s, log_s, m


def softmax(x: np.ndarray, axis: int, where: np.ndarray | None) -> np.ndarray:
    with np.errstate(**_ERRSTATE):
        _, e, s, _, _ = _shifted_exp(x, axis, where)
        if where is not None:
            # A row with no allowed entry has softmax 0, not 0/0.
            s[s == 0] = 1.0
        e /= s
    return e.astype(x.dtype, copy=False)


def log_softmax(x: np.ndarray, axis: int, where: np.ndarray | None) -> np.ndarray:
    with np.errstate(**_ERRSTATE):
        zs, _, _, log_s, _ = _shifted_exp(x, axis, where)
        zs -= log_s
        if where is not None:
            zs[~where] = -np.inf
    return zs.astype(x.dtype, copy=False)


def logsumexp(x: np.ndarray, axis: int, keepdims: bool, where: np.ndarray | None) -> np.ndarray:
    with np.errstate(**_ERRSTATE):
        _, _, _, log_s, m = _shifted_exp(x, axis, where)
        out = m + log_s
    if not keepdims:
        out = np.squeeze(out, axis=axis)
    return out.astype(x.dtype, copy=False)


def softmax_vjp(y: np.ndarray, dy: np.ndarray, axis: int) -> np.ndarray:
    """``dx = y * (dy - sum(y * dy))``: the Jacobian ``diag(y) - y y^T`` applied to ``dy``."""
    acc = acc_dtype(np.result_type(y, dy))
    y = y.astype(acc, copy=False)
    dy = dy.astype(acc, copy=False)
    with np.errstate(**_ERRSTATE):
        return y * (dy - np.sum(y * dy, axis=axis, keepdims=True))


def log_softmax_vjp(logp: np.ndarray, dy: np.ndarray, axis: int) -> np.ndarray:
    """``dx = dy - exp(logp) * sum(dy)``: the Jacobian ``I - 1 p^T`` transposed, applied."""
    acc = acc_dtype(np.result_type(logp, dy))
    dy = dy.astype(acc, copy=False)
    with np.errstate(**_ERRSTATE):
        return dy - np.exp(logp.astype(acc, copy=False)) * np.sum(dy, axis=axis, keepdims=True)


def softmax_jacobian(y: np.ndarray, axis: int) -> np.ndarray:
    """``J[..., i, ..., j] = y_i (delta_ij - y_j)``, ``i`` at ``axis`` and ``j`` appended."""
    ym = np.moveaxis(y.astype(acc_dtype(y.dtype), copy=False), axis, -1)
    jac = -ym[..., :, None] * ym[..., None, :]
    diag = np.einsum("...ii->...i", jac)  # a writable view of the diagonal
    diag += ym
    return np.moveaxis(jac, -2, axis)


def _xmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a * b`` with ``0 * anything = 0`` (for ``q * log q`` and ``q * inf`` terms)."""
    with np.errstate(**_ERRSTATE):
        return np.where(a == 0, 0.0, a * b)


def _softcap(x: np.ndarray, cap: np.floating) -> tuple[np.ndarray, np.ndarray]:
    """``z = cap tanh(u)`` and ``dz/dx = 1 / cosh(u)**2`` for ``u = x / cap`` (``x`` is ours).

    The derivative is formed as ``4 e / (1 + e)**2`` with ``e = exp(-2 |u|)``, which has no
    cancellation: ``1 - tanh(u)**2`` loses every digit once ``tanh(u)`` rounds to 1 (|u| > 9
    in float32, > 19 in float64), although the derivative is still far from 0 there.
    """
    x /= cap  # u
    z = np.tanh(x)
    z *= cap
    np.abs(x, out=x)
    x *= -2.0
    e = np.exp(x, out=x)
    den = e + 1.0
    den *= den
    e *= 4.0
    e /= den
    return z, e


def target_mass(
    target: np.ndarray, weight: np.ndarray | None, ignore_index: int, valid: np.ndarray
) -> np.ndarray:
    """Per row ``v_i * sum_c w_c y_ic`` (y before smoothing): the mean denominator's terms.

    ``target`` is (N,) integer indices or (N, C) floats; ``valid`` is (N,) bool, False for rows
    that have no allowed class.
    """
    if target.ndim == 1:
        keep = valid & (target != ignore_index)
        if weight is None:
            return keep.astype(np.float64)
        safe = np.where(keep, target, 0)
        return np.where(keep, weight[safe], 0.0)
    y = target.astype(np.float64, copy=False)
    mass = y.sum(axis=1) if weight is None else y @ weight
    return np.where(valid, mass, 0.0)


def _col_grad(
    r: np.ndarray,
    s: np.ndarray,
    big_s: np.ndarray,
    zl: np.ndarray | float,
    rest: np.ndarray,
    e_col: np.ndarray,
    wq_col: np.ndarray,
    other: np.ndarray | float,
) -> np.ndarray:
    """The gradient at one class per row, ``r ((S + zl) e / s - w q)``, in float64.

    ``big_s`` is ``S + zl`` (``S = sum_c w_c q_c``, ``zl = 2 zeta lse``), ``other`` is
    ``S - w q`` summed without this class's term, ``rest = s - 1`` summed without the
    maximum's term. Where this class is a maximum (``e == 1``), ``(S + zl) / s - w q`` cancels
    for a confident row (``p`` rounds to 1: ``x = [40, 0, 0]`` would give 0, not -8.5e-18);
    since ``s = 1 + rest`` there, it is formed as ``((S - w q) + zl - w q rest) / s``: the
    same value, no cancellation.
    """
    top = r * ((other + zl) - wq_col * rest) / s
    return np.where(e_col == 1.0, top, r * (big_s * (e_col / s) - wq_col))


def fused_rows(
    x: np.ndarray,
    target: np.ndarray,
    *,
    weight: np.ndarray | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    where: np.ndarray | None,
    kl: bool,
    row_scale: np.ndarray | None,
    grad_out: np.ndarray | None,
) -> np.ndarray:
    """Per-row softmax cross-entropy and (optionally) its gradient, on (N, C) rows.

    The contract (shared with the numba kernel) is in ``docs/internals.md``. Returns the
    per-row losses as float64; writes ``row_scale[i] * dL_i/dx_i`` into ``grad_out`` when
    ``row_scale`` is given. ``grad_out`` may be ``x`` itself.
    """
    n, c = x.shape
    acc = acc_dtype(x.dtype)
    eps = label_smoothing
    soft = target.ndim == 2
    rows = np.arange(n)
    with np.errstate(**_ERRSTATE):
        # Workspace for z - m and then the gradient: the output buffer itself when a gradient
        # is wanted and it has the accumulation dtype (no extra N x C allocation); with a
        # softcap x must survive.
        if row_scale is not None and grad_out is not None and grad_out.dtype == acc and not softcap:
            z = grad_out
            if z is not x:
                np.copyto(z, x)
        elif softcap is None:
            z = x.astype(acc)
        else:
            z, cap_grad = _softcap(x.astype(acc), acc.type(softcap))

        if where is not None:
            z[~where] = -np.inf
            n_allowed = where.sum(axis=1)
        else:
            n_allowed = np.full(n, c)
        valid = n_allowed > 0

        m = _row_max(z, 1, None)
        z -= m  # z now holds z - m
        w = np.ones(c, dtype=acc) if weight is None else weight.astype(acc)
        spread = np.where(valid, eps / np.maximum(n_allowed, 1), 0.0).astype(acc)

        # Per row: S_i = sum_c w_c q_c and T_i = sum_c w_c q_c (z_c - m), before z is overwritten.
        if soft:
            q = target.astype(acc) * acc.type(1.0 - eps)
            if eps:
                q += spread[:, None] if where is None else spread[:, None] * where
            wq = q * w
            big_t = _xmul(wq, z).sum(axis=1)  # (S comes below, without the top class's term)
            v = valid
        else:
            v = valid & (target != ignore_index)
            t = np.where(v, target, 0)
            w_t = w[t]
            gold = acc.type(1.0 - eps) * w_t
            big_t = _xmul(gold, z[rows, t])
            big_s = gold.copy()
            if eps:
                # The smoothing mass spreads over the allowed classes only.
                w_allowed = w[None, :] if where is None else np.where(where, w, 0.0).astype(acc)
                sum_w_allowed = w_allowed.sum(axis=1)
                big_s += spread * sum_w_allowed
                big_t += spread * _xmul(w_allowed, z).sum(axis=1)

        e = np.exp(z, out=z)
        k, top, rest = _sum_parts(e, 1)
        log_s = _log_of_sum(top, rest)[:, 0]
        if soft:
            # S = sum_c w_c q_c, its top class's term kept apart for the gradient below
            wq_top, big_s_rest = (a[:, 0] for a in _sum_without(wq, k, 1))
            big_s = big_s_rest + wq_top
        k, top, rest = k[:, 0], top[:, 0], rest[:, 0]
        # The z-loss terms in float64: z_loss may lie beyond the float32 range, and lse may be 0.
        lse = m[:, 0].astype(np.float64) + log_s
        loss = (big_s * log_s - big_t).astype(np.float64)
        zl = 0.0  # 2 zeta lse
        if z_loss:
            loss += (z_loss * lse) * lse
            zl = 2.0 * (z_loss * lse)
        if kl:
            if soft:
                loss = loss + _xmul(wq, np.log(q)).sum(axis=1)
            else:
                # q_t = 1 - eps + spread (when t is allowed); every other allowed class: spread.
                t_allowed = np.ones(n, dtype=bool) if where is None else where[rows, t]
                q_t = acc.type(1.0 - eps) + np.where(t_allowed, spread, 0.0).astype(acc)
                loss = loss + w_t * _xmul(q_t, np.log(q_t))
                if eps:
                    other_w = sum_w_allowed - np.where(t_allowed, w_t, 0.0)
                    loss = loss + _xmul(spread * other_w, np.log(spread))
        loss = np.where(v, loss, 0.0)

        if row_scale is None:
            return loss
        # g_c = r ((S + 2 zeta lse) e_c / s - w_c q_c), the per-row factors in float64; one
        # class per row (index targets: t; soft: the first maximum) by _col_grad, exactly.
        r64 = row_scale.astype(np.float64)
        s64 = top.astype(np.float64) + rest
        big_s64 = big_s.astype(np.float64) + zl  # S + 2 zeta lse
        if soft:
            col, e_col, wq_col, other = k, top, wq_top, big_s_rest
        else:
            col, e_col, wq_col, other = t, e[rows, t], gold.astype(np.float64), 0.0
            if eps:  # (t is allowed where it is a maximum)
                wq_col = wq_col + spread * w_t
                other = spread * (sum_w_allowed.astype(np.float64) - w_t)
        g_col = _col_grad(r64, s64, big_s64, zl, rest, e_col, wq_col, other)
        r = r64.astype(acc)
        e *= (r64 * big_s64 / s64).astype(acc)[:, None]  # e is now the p part of the gradient
        if soft:
            e -= wq * r[:, None]
        elif eps:
            e -= (spread * r)[:, None] * w_allowed
        e[rows, col] = g_col
        e[~v] = 0.0  # ignored and fully masked rows: exactly 0, even with NaN logits
        if where is not None:
            e[~where] = 0.0  # masked classes do not influence the loss
        if softcap is not None:
            e *= cap_grad
        if grad_out is not None and e is not grad_out:
            np.copyto(grad_out, e, casting="same_kind")
    return loss


def ce_rows(
    probs: np.ndarray,
    target: np.ndarray,
    *,
    weight: np.ndarray | None,
    ignore_index: int,
    row_scale: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cross-entropy on probabilities, per row: ``L_i = -sum_c w_c q_ic log p_ic``.

    Returns the float64 per-row losses and, when ``row_scale`` is given, the gradient
    ``-row_scale_i * w_c q_ic / p_ic`` in the accumulation dtype.
    """
    n, c = probs.shape
    acc = acc_dtype(probs.dtype)
    w = np.ones(c, dtype=acc) if weight is None else weight.astype(acc)
    p = probs.astype(acc, copy=False)
    with np.errstate(**_ERRSTATE):
        if target.ndim == 2:
            wq = target.astype(acc) * w
            loss = -_xmul(wq, np.log(p)).sum(axis=1)
            v = np.ones(n, dtype=bool)
        else:
            v = target != ignore_index
            t = np.where(v, target, 0)
            wq = np.zeros((n, c), dtype=acc)
            wq[np.arange(n), t] = np.where(v, w[t], 0.0)
            loss = -_xmul(wq[np.arange(n), t], np.log(p[np.arange(n), t]))
        loss = np.where(v, loss, 0.0).astype(np.float64)
        if row_scale is None:
            return loss, None
        grad = _xmul(wq, -1.0 / p) * np.where(v, row_scale, 0.0).astype(acc)[:, None]
    return loss, grad
