"""Tests for fnas.hypergrad: the exact unrolled hypergradient against float64 central differences.

The references here are written independently of the module under test: pytrees are walked by the
small helpers below (not ``fnas.tree``/optree), and inner gradients come from ``torch.autograd``
(not ``torch.func``).

A note on kinks. The supernet has ReLUs (and, in the seed space, max pools). The *unrolled*
objective ``alpha -> L_val(w'(alpha), alpha)`` is therefore not merely kinked but discontinuous:
``w'`` contains the inner gradient, which contains ``relu'(z)``, a step function. A central
difference that straddles such a point returns ``jump / 2h`` instead of the derivative. With
``h = 1e-6`` it happens on the tiny supernet below: over seeds 0-9 of each space, seed 1 of
``kx1_no_maxpool`` has a ReLU input within ~1e-6 of zero and fails (K = 1 and 2) by 1.0.
The points here are fixed seeds that lie off every discontinuity; if a comparison ever fails, the
test recomputes the differences at ``h / 2`` to tell the two causes apart: a discontinuity within
``+-h`` (the differences disagree; pick another seed) or a wrong ``exact``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F

from fnas.core import hypergrad as H
from fnas.core import tree as T
from fnas.core.optim import SGDState, adam, sgd
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.search import arch_step, init_search, search_step, supernet_loss, weight_step
from fnas.spaces.cell.supernet import init_supernet

F64 = torch.float64

# Tolerances, stated per dtype. Central differences need float64: the step must be tiny (the
# unrolled objective is only piecewise smooth), and float32 round-off divided by a 1e-6 step is
# ~0.1 relative. Only float64 is compared against differences; float32 is checked bit for bit.
CD_STEP = {F64: 1e-6}  # central-difference step in alpha
CD_RTOL = {F64: 1e-6}  # exact vs central difference, ||g - g_cd|| / ||g_cd|| per alpha tensor
CD_SELF_RTOL = {F64: 1e-5}  # CD(h) vs CD(h/2): the smoothness precondition
REF_RTOL = {F64: 1e-10}  # exact vs an analytic autograd reference (both exact up to round-off)
FD_SMOOTH_RTOL = 1e-4  # DARTS finite difference vs exact on a smooth loss, DARTS' own eps

SMALL = dict(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(8, 1), nodes=2, multiplier=2, stem_multiplier=1)
SPACES = {
    # No max pool: ReLUs are the only non-smooth points.
    "kx1_no_maxpool": SpaceConfig(
        **SMALL, primitives=("none", "avg_pool_3x1", "skip_connect", "conv_bn_relu_3x1", "conv_bn_relu_5x1")
    ),
    # The seed's full primitive set (P.SEED_KX1), max pool included.
    "kx1_seed": SpaceConfig(**SMALL),
}

# A large virtual learning rate and weight decay make the second-order term a large part of the
# hypergradient (exact differs from first order by ~60% here), so the comparison is sensitive to it.
XI, MOMENTUM, WD = 0.1, 0.9, 3e-2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every tensor here is tiny: intra-op threads only add overhead, and on a busy 2-core machine
    OpenMP's spinning workers stall single calls for seconds (measured: 20 ms -> 4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- independent pytree helpers ---------------------------------------------------------------


def tmap(fn, *trees):
    """Leaf-wise map over dicts, (named) tuples and lists, in the first tree's key order."""
    t = trees[0]
    if isinstance(t, dict):
        for other in trees[1:]:
            assert set(other) == set(t), f"key mismatch: {sorted(t)} vs {sorted(other)}"
        return {k: tmap(fn, *(x[k] for x in trees)) for k in t}
    if isinstance(t, tuple) and hasattr(t, "_fields"):
        return type(t)(*(tmap(fn, *xs) for xs in zip(*trees, strict=True)))
    if isinstance(t, (tuple, list)):
        return type(t)(tmap(fn, *xs) for xs in zip(*trees, strict=True))
    return fn(*trees)


def flat(t, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """``[(path, leaf)]`` in the tree's own order."""
    if isinstance(t, dict):
        return [p for k in t for p in flat(t[k], f"{prefix}/{k}")]
    if isinstance(t, tuple) and hasattr(t, "_fields"):
        return [p for k, v in zip(t._fields, t) for p in flat(v, f"{prefix}/{k}")]
    if isinstance(t, (tuple, list)):
        return [p for i, v in enumerate(t) for p in flat(v, f"{prefix}/{i}")]
    return [(prefix, t)]


def leaves(t) -> list[torch.Tensor]:
    return [x for _, x in flat(t)]


def unflatten(t, values: list) -> Any:
    it = iter(values)
    out = tmap(lambda _: next(it), t)
    assert next(it, None) is None
    return out


def clone(t):
    return tmap(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, t)


def assert_bitwise_equal(a, b, what: str) -> None:
    fa, fb = flat(a), flat(b)
    assert [p for p, _ in fa] == [p for p, _ in fb], f"{what}: different structure"
    for (path, x), (_, y) in zip(fa, fb):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f"{what}: leaf {path} differs"
        else:
            assert x == y, f"{what}: leaf {path} differs"


def rel_err(g, ref) -> float:
    """``||g - ref|| / ||ref||`` over all leaves."""
    num = sum(float(torch.sum((x - y) ** 2)) for x, y in zip(leaves(g), leaves(ref)))
    den = sum(float(torch.sum(y**2)) for y in leaves(ref))
    return (num / den) ** 0.5


def cosine(g, ref) -> float:
    a = torch.cat([x.flatten() for x in leaves(g)])
    b = torch.cat([x.flatten() for x in leaves(ref)])
    return float(a @ b / (a.norm() * b.norm()))


# --- independent references -------------------------------------------------------------------


def unrolled_objective(loss_fn, weights, alphas, momentum, batches, valid_batch, *, xi, momentum_coef, weight_decay):
    """``L_val(w_K(alpha), alpha)`` as a plain number, with ``torch.autograd`` inner gradients.

    ``buf' = m buf + dL_train/dw + wd w``, ``w' = w - xi buf'``, K times (the real SGD rule).
    """
    w, buf = leaves(weights), leaves(momentum)
    for batch in batches:
        w = [x.detach().requires_grad_(True) for x in w]
        with torch.enable_grad():
            loss = loss_fn(unflatten(weights, w), alphas, batch)[0]
            g = torch.autograd.grad(loss, w, allow_unused=True)
        g = [torch.zeros_like(x) if gi is None else gi for gi, x in zip(g, w)]
        buf = [momentum_coef * b + gi + weight_decay * x.detach() for b, gi, x in zip(buf, g, w)]
        w = [x.detach() - xi * b for x, b in zip(w, buf)]
    with torch.no_grad():
        return float(loss_fn(unflatten(weights, w), alphas, valid_batch)[0])


def central_difference(objective, alphas, h: float):
    """``(f(a + h e_i) - f(a - h e_i)) / 2h`` for every coordinate of every alpha leaf."""
    a_leaves = leaves(alphas)
    out = []
    for j, a in enumerate(a_leaves):
        g = torch.zeros_like(a)
        for i in range(a.numel()):
            f = []
            for sign in (1.0, -1.0):
                shifted = a.clone()
                shifted.view(-1)[i] += sign * h
                f.append(objective(unflatten(alphas, a_leaves[:j] + [shifted] + a_leaves[j + 1 :])))
            g.view(-1)[i] = (f[0] - f[1]) / (2 * h)
        out.append(g)
    return unflatten(alphas, out)


def autograd_hypergrad(loss_fn, weights, alphas, momentum, batches, valid_batch, *, xi, momentum_coef, weight_decay):
    """``d/dalpha L_val(w_K(alpha), alpha)`` with ``torch.autograd.grad(..., create_graph=True)``."""
    a = [x.detach().requires_grad_(True) for x in leaves(alphas)]
    a_tree = unflatten(alphas, a)
    w = [x.detach().requires_grad_(True) for x in leaves(weights)]
    buf = leaves(momentum)
    for batch in batches:
        loss = loss_fn(unflatten(weights, w), a_tree, batch)[0]
        g = torch.autograd.grad(loss, w, create_graph=True)
        buf = [momentum_coef * b + gi + weight_decay * x for b, gi, x in zip(buf, g, w)]
        w = [x - xi * b for x, b in zip(w, buf)]
    val = loss_fn(unflatten(weights, w), a_tree, valid_batch)[0]
    return unflatten(alphas, list(torch.autograd.grad(val, a))), val.detach()


# --- fixtures -------------------------------------------------------------------------------


def make_batch(gen: torch.Generator, cfg: SpaceConfig, n: int, dtype=F64):
    x = torch.randn(n, cfg.in_channels, *cfg.input_shape, generator=gen, dtype=dtype)
    return x, torch.randint(0, cfg.num_classes, (n,), generator=gen)


class Problem(NamedTuple):
    loss_fn: Any
    weights: dict
    alphas: dict
    stats: dict
    momentum: dict
    train_batches: list
    valid_batch: tuple


def supernet_problem(space: str, *, seed: int = 0, dtype=F64, k: int = 2, alpha_scale: float = 0.5) -> Problem:
    """A supernet with non-trivial alphas, momentum buffers from a real first step, k train batches."""
    cfg = SPACES[space]
    gen = torch.Generator().manual_seed(seed)
    weights, alphas, stats = init_supernet(cfg, gen, dtype=dtype)
    if alpha_scale:  # away from DARTS' near-uniform init, so every coordinate matters
        alphas = tmap(lambda a: alpha_scale * torch.randn(a.shape, generator=gen, dtype=dtype), alphas)
    train = [make_batch(gen, cfg, 5, dtype) for _ in range(k)]
    valid = make_batch(gen, cfg, 6, dtype)

    def loss_fn(w, a, b):
        return supernet_loss(w, a, stats, b, cfg=cfg)

    # torch.optim.SGD's first momentum buffer is the first (decayed) gradient: take one from a real step
    first = make_batch(gen, cfg, 5, dtype)
    w = [x.detach().requires_grad_(True) for x in leaves(weights)]
    g = torch.autograd.grad(loss_fn(unflatten(weights, w), alphas, first)[0], w, allow_unused=True)
    momentum = unflatten(
        weights, [(torch.zeros_like(x) if gi is None else gi) + WD * x.detach() for gi, x in zip(g, w)]
    )
    return Problem(loss_fn, weights, alphas, stats, momentum, train, valid)


def hyper_kwargs(k: int, xi: float = XI) -> dict:
    return dict(xi=xi, optimizer=sgd(momentum=MOMENTUM, weight_decay=WD), unroll_steps=k)


# --- 1, 2: exact vs central differences of the unrolled objective on the supernet -------------


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("k", [1, 2], ids=["K1", "K2"])
def test_exact_matches_central_difference(space, k):
    p = supernet_problem(space, k=k)
    batches = p.train_batches[:k]
    stats_before = clone(p.stats)
    g, (val_loss, _) = H.exact(p.loss_fn, p.weights, p.alphas, SGDState(p.momentum), batches, p.valid_batch, **hyper_kwargs(k))

    def objective(a):
        return unrolled_objective(
            p.loss_fn, p.weights, a, p.momentum, batches, p.valid_batch, xi=XI, momentum_coef=MOMENTUM, weight_decay=WD
        )

    h = CD_STEP[F64]
    cd = central_difference(objective, p.alphas, h)
    errs = {name: rel_err({name: g[name]}, {name: cd[name]}) for name in p.alphas}
    if max(errs.values()) >= CD_RTOL[F64]:
        # Tell a discontinuity near the test point apart from a wrong gradient: off a discontinuity,
        # halving h changes a central difference by O(h^2) only.
        cd_half = central_difference(objective, p.alphas, h / 2)
        smooth = rel_err(cd_half, cd)
        assert smooth < CD_SELF_RTOL[F64], (
            f"{space}: CD(h) and CD(h/2) disagree ({smooth:.1e}): a ReLU/max-pool discontinuity of the "
            "unrolled objective lies within +-h of this test point; choose another seed"
        )
    first = H.first_order(p.loss_fn, p.weights, p.alphas, SGDState(p.momentum), batches, p.valid_batch)[0]
    print(f"\n[{space} K={k}] exact vs central difference: " + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()))
    print(f"[{space} K={k}] first order vs exact (size of the second-order term): {rel_err(first, g):.2f}")
    for name, err in errs.items():
        assert err < CD_RTOL[F64], f"{space}/{name}: exact vs central difference {err:.2e}"
    assert rel_err(first, g) > 1e3 * CD_RTOL[F64], "the test point does not exercise the second-order term"
    assert float(val_loss) == pytest.approx(objective(p.alphas), rel=1e-12)
    assert_bitwise_equal(p.stats, stats_before, "BatchNorm stats after exact")


# --- 3: first order is exact with xi = 0, bit for bit ---------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("k", [1, 2], ids=["K1", "K2"])
def test_first_order_is_exact_with_xi_zero_bitwise(dtype, k):
    p = supernet_problem("kx1_seed", dtype=dtype, k=k)
    args = (p.loss_fn, p.weights, p.alphas, SGDState(p.momentum), p.train_batches[:k], p.valid_batch)
    g_first, (loss_first, aux_first) = H.first_order(*args, **hyper_kwargs(k, xi=0.0))
    g_exact, (loss_exact, aux_exact) = H.exact(*args, **hyper_kwargs(k, xi=0.0))
    assert all(x.dtype == dtype for x in leaves(g_exact))
    assert_bitwise_equal(g_exact, g_first, "grad_alphas")
    assert_bitwise_equal(loss_exact, loss_first, "val_loss")
    assert_bitwise_equal(aux_exact, aux_first, "val_aux")


# --- a smooth model written by a user, on their own pytrees -----------------------------------


class Dense(NamedTuple):
    weight: torch.Tensor
    bias: torch.Tensor


def user_problem(seed: int = 0, *, k: int = 2):
    """A 2-layer MLP whose second layer is two branches gated by softmax(alpha); smooth everywhere.

    Dict keys are deliberately not in sorted order (optree sorts, torch.utils._pytree does not).
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(shape, generator=gen, dtype=F64)

    weights = {
        "trunk": Dense(randn(6, 4, scale=0.6), randn(6, scale=0.1)),
        "branches": {"tanh": Dense(randn(3, 6, scale=0.6), randn(3, scale=0.1)), "sin": Dense(randn(3, 6), randn(3))},
    }
    alphas = {"gate": randn(2, scale=0.5), "feature": randn(4, scale=0.5)}
    momentum = tmap(lambda w: 0.1 * torch.randn(w.shape, generator=gen, dtype=F64), weights)

    def batch(n):
        return randn(n, 4), torch.randint(0, 3, (n,), generator=gen)

    def loss_fn(w, a, b):
        x, y = b
        h = torch.tanh(F.linear(x * torch.sigmoid(a["feature"]), *w["trunk"]))
        gate = torch.softmax(a["gate"], dim=0)
        logits = gate[0] * torch.tanh(F.linear(h, *w["branches"]["tanh"])) + gate[1] * torch.sin(
            F.linear(h, *w["branches"]["sin"])
        )
        return F.cross_entropy(logits, y), {"logits": logits}

    return loss_fn, weights, alphas, momentum, [batch(8) for _ in range(k)], batch(8)


# --- 4: the DARTS finite-difference approximation ---------------------------------------------


@pytest.mark.parametrize("space", list(SPACES))
def test_finite_difference_near_exact_on_supernet(space):
    """Report-only sanity at DARTS' settings (xi = lr = 0.025, near-uniform alphas).

    DARTS' radius ``0.01`` in weight space crosses many ReLU kinks of this tiny network, so the
    approximation is rough here. Over seeds 0-9 of both spaces: relative error 0.14-1.32 (one of 20
    above 1), cosine 0.61-0.99, and in 8 of 20 no closer to exact than first order (0.27-1.06).
    Only sanity is asserted; the formula itself is checked on a smooth loss and, at a radius that
    stays off the kinks, on this supernet (below).
    """
    p = supernet_problem(space, k=1, alpha_scale=0.0)
    args = (p.loss_fn, p.weights, p.alphas, SGDState(p.momentum), p.train_batches[0], p.valid_batch)
    kw = dict(xi=0.025, optimizer=sgd(momentum=MOMENTUM, weight_decay=3e-4))
    g_exact, _ = H.exact(*args, **kw)
    g_fd, (val_loss, _) = H.finite_difference(*args, **kw)
    g_first, _ = H.first_order(*args, **kw)
    err, cos = rel_err(g_fd, g_exact), cosine(g_fd, g_exact)
    print(
        f"\n[{space}] finite difference vs exact: relative error {err:.3f}, cosine {cos:.3f} "
        f"(first order vs exact: {rel_err(g_first, g_exact):.3f}, cosine {cosine(g_first, g_exact):.3f})"
    )
    assert all(torch.isfinite(x).all() for x in leaves(g_fd)) and torch.isfinite(val_loss)
    assert cos > 0.5
    assert err < 1.0


def _rescaled(loss_fn, weights, momentum, s: float, *, xi: float, wd: float):
    """The same problem in coordinates ``w = s u``: exact is invariant, FD's radius shrinks to ``0.01 / s``.

    ``L_s(w) = L(w / s)``; with ``xi_s = s^2 xi``, ``wd_s = wd / s^2`` and ``buf_s = buf / s`` the
    virtual step maps ``u -> u'`` exactly as before, so the unrolled objective in alpha is unchanged.
    DARTS' perturbation ``eps dL/dw'`` has norm 0.01 in ``w``, i.e. ``0.01 / s`` in ``u``.
    """

    def loss_s(w, a, b):
        return loss_fn(tmap(lambda x: x / s, w), a, b)

    return loss_s, tmap(lambda x: x * s, weights), tmap(lambda x: x / s, momentum), xi * s**2, wd / s**2


def test_finite_difference_converges_to_exact_on_smooth_loss():
    loss_fn, weights, alphas, momentum, train, valid = user_problem(k=1)
    errs = []
    for s in (1.0, 10.0, 100.0):
        loss_s, w_s, m_s, xi_s, wd_s = _rescaled(loss_fn, weights, momentum, s, xi=XI, wd=WD)
        kw = dict(xi=xi_s, optimizer=sgd(momentum=MOMENTUM, weight_decay=wd_s))
        g_exact, _ = H.exact(loss_s, w_s, alphas, SGDState(m_s), train[0], valid, **kw)
        g_fd, _ = H.finite_difference(loss_s, w_s, alphas, SGDState(m_s), train[0], valid, **kw)
        errs.append(rel_err(g_fd, g_exact))
    g_first, _ = H.first_order(loss_fn, weights, alphas, SGDState(momentum), train[0], valid)
    g_exact, _ = H.exact(loss_fn, weights, alphas, SGDState(momentum), train[0], valid, **hyper_kwargs(1))
    print(
        f"\n[smooth] FD vs exact at radius 1e-2, 1e-3, 1e-4: {', '.join(f'{e:.1e}' for e in errs)}; "
        f"first order vs exact {rel_err(g_first, g_exact):.2f}"
    )
    assert errs[0] < FD_SMOOTH_RTOL
    assert rel_err(g_first, g_exact) > 1e3 * FD_SMOOTH_RTOL  # the implicit term is not negligible
    # a central difference is second order: 10x smaller radius, ~100x smaller error (a precedence
    # slip such as (g+ - g-) / 2 * eps would be off by eps^2 and fail at once)
    assert errs[1] < errs[0] / 50
    assert errs[2] < errs[1] / 50


def test_finite_difference_formula_on_supernet_at_small_radius():
    """On the real supernet, with the weights rescaled so DARTS' radius is 1e-6, FD equals exact.

    The radius must stay off the ReLU/max-pool kinks: at 1e-6 it does for seeds 0-9 of ``kx1_seed``
    (errors 7e-11..3e-10); seed 1 of ``kx1_no_maxpool`` (see the module docstring) does not.
    """
    p = supernet_problem("kx1_seed", k=1)
    loss_s, w_s, m_s, xi_s, wd_s = _rescaled(p.loss_fn, p.weights, p.momentum, 1e4, xi=XI, wd=WD)
    kw = dict(xi=xi_s, optimizer=sgd(momentum=MOMENTUM, weight_decay=wd_s))
    g_exact, _ = H.exact(loss_s, w_s, p.alphas, SGDState(m_s), p.train_batches[0], p.valid_batch, **kw)
    g_fd, _ = H.finite_difference(loss_s, w_s, p.alphas, SGDState(m_s), p.train_batches[0], p.valid_batch, **kw)
    args = (p.loss_fn, p.weights, p.alphas, SGDState(p.momentum), p.train_batches[0], p.valid_batch)
    g_plain, _ = H.exact(*args, **hyper_kwargs(1))
    err = rel_err(g_fd, g_exact)
    print(f"\n[kx1_seed] FD vs exact at radius 1e-6: {err:.1e}")
    assert rel_err(g_exact, g_plain) < 1e-8  # the rescaling leaves the exact hypergradient unchanged
    assert err < 1e-6


# --- 5: composability: a user's pytrees and loss -------------------------------------------


@pytest.mark.parametrize("k", [1, 2], ids=["K1", "K2"])
def test_exact_on_user_pytrees_matches_autograd_reference(k):
    loss_fn, weights, alphas, momentum, train, valid = user_problem(k=k)
    g, (val_loss, aux) = H.exact(loss_fn, weights, alphas, SGDState(momentum), train, valid, **hyper_kwargs(k))
    ref, ref_loss = autograd_hypergrad(
        loss_fn, weights, alphas, momentum, train, valid, xi=XI, momentum_coef=MOMENTUM, weight_decay=WD
    )
    assert [p for p, _ in flat(g)] == [p for p, _ in flat(alphas)]  # the user's structure comes back
    err = rel_err(g, ref)
    print(f"\n[user MLP K={k}] exact vs autograd reference: {err:.1e}")
    assert err < REF_RTOL[F64]
    assert float(val_loss) == pytest.approx(float(ref_loss), rel=1e-12)
    assert set(aux) == {"logits"} and aux["logits"].shape == (8, 3)


@pytest.mark.parametrize("k", [1, 2], ids=["K1", "K2"])
def test_virtual_step_is_the_weight_optimisers_own_update(k):
    """Any bound optimiser is the virtual step: Adam here, against central differences of the
    unrolled objective written with ``torch.autograd`` inner gradients and Adam's rule by hand."""
    loss_fn, weights, alphas, _, train, valid = user_problem(k=k)
    b1, b2, eps, wd, xi = 0.5, 0.999, 1e-8, 1e-2, 0.05
    opt = adam(betas=(b1, b2), eps=eps, weight_decay=wd)
    g, _ = H.exact(loss_fn, weights, alphas, opt.init(weights), train, valid, xi=xi, optimizer=opt, unroll_steps=k)

    def objective(a):
        w = [x.clone() for x in leaves(weights)]
        mu, nu = [torch.zeros_like(x) for x in w], [torch.zeros_like(x) for x in w]
        for t, batch in enumerate(train[:k], start=1):
            wr = [x.detach().requires_grad_(True) for x in w]
            grads = torch.autograd.grad(loss_fn(unflatten(weights, wr), a, batch)[0], wr)
            d = [gi + wd * x for gi, x in zip(grads, w)]
            mu = [b1 * m + (1 - b1) * di for m, di in zip(mu, d)]
            nu = [b2 * v + (1 - b2) * di * di for v, di in zip(nu, d)]
            w = [x - xi * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) for x, m, v in zip(w, mu, nu)]
        return float(loss_fn(unflatten(weights, w), a, valid)[0])

    cd = central_difference(objective, alphas, CD_STEP[F64])
    assert rel_err(g, cd) < CD_RTOL[F64], rel_err(g, cd)
    g_sgd, _ = H.exact(loss_fn, weights, alphas, SGDState(T.zeros_like(weights)), train, valid, xi=xi,
                       unroll_steps=k)
    assert rel_err(g, g_sgd) > 1e-3  # the optimiser really changes the hypergradient


# --- 6: BatchNorm statistics do not leak; search_step is pure -----------------------------------


def _search_setup(hypergrad: str, k: int):
    cfg = SearchConfig(space=SPACES["kx1_seed"], hypergrad=hypergrad, unroll_steps=k, lr=0.1, total_steps=10)
    gen = torch.Generator().manual_seed(0)
    state = init_search(cfg, gen, dtype=F64)
    # one real step first: non-zero momentum buffers, non-default BN statistics
    state, _ = weight_step(state, make_batch(gen, cfg.space, 5), cfg=cfg)
    train = [make_batch(gen, cfg.space, 5) for _ in range(k)]
    return cfg, state, (train if k > 1 else train[0]), make_batch(gen, cfg.space, 6)


SEARCH_CASES = [("first_order", 1), ("exact", 1), ("exact", 2), ("finite_difference", 1)]
SEARCH_IDS = ["first_order", "exact_K1", "exact_K2", "finite_difference"]


@pytest.mark.parametrize("hypergrad,k", SEARCH_CASES, ids=SEARCH_IDS)
def test_arch_step_keeps_bn_stats(hypergrad, k):
    cfg, state, train, valid = _search_setup(hypergrad, k)
    before = clone(state)
    new, _ = arch_step(state, train, valid, cfg=cfg)
    assert_bitwise_equal(state, before, "arch_step input state")
    assert_bitwise_equal(new.stats, before.stats, "stats after arch_step")  # the virtual step's are dropped
    assert not all(torch.equal(a, b) for a, b in zip(leaves(new.alphas), leaves(before.alphas)))


@pytest.mark.parametrize("hypergrad,k", SEARCH_CASES, ids=SEARCH_IDS)
def test_search_step_is_pure_and_keeps_only_real_step_stats(hypergrad, k):
    cfg, state, train, valid = _search_setup(hypergrad, k)
    before, batches_before = clone(state), clone((train, valid))
    new, metrics = search_step(state, train, valid, cfg=cfg)
    assert_bitwise_equal(state, before, "search_step input state")
    assert_bitwise_equal((train, valid), batches_before, "search_step input batches")
    arch_state, _ = arch_step(before, train, valid, cfg=cfg)
    ref, _ = weight_step(arch_state, train, cfg=cfg)
    assert_bitwise_equal(new.stats, ref.stats, "stats after search_step vs weight_step(arch_step(state))")
    assert_bitwise_equal(new, ref, "state after search_step vs weight_step(arch_step(state))")
    assert all(m.ndim == 0 for m in metrics.values())


# --- 7: unroll_steps validation ---------------------------------------------------------------


def test_finite_difference_rejects_unrolling():
    p = supernet_problem("kx1_no_maxpool", k=2)
    with pytest.raises(ValueError, match="unroll_steps"):
        H.finite_difference(
            p.loss_fn, p.weights, p.alphas, SGDState(p.momentum), p.train_batches, p.valid_batch, **hyper_kwargs(2)
        )


def test_exact_rejects_too_few_batches():
    p = supernet_problem("kx1_no_maxpool", k=2)
    with pytest.raises(ValueError, match="needs 3 training batches, got 2"):
        H.exact(p.loss_fn, p.weights, p.alphas, SGDState(p.momentum), p.train_batches, p.valid_batch, **hyper_kwargs(3))


@pytest.mark.parametrize("hypergrad", ["first_order", "finite_difference"])
def test_search_config_rejects_unrolling_without_exact(hypergrad):
    with pytest.raises(ValueError, match="needs hypergrad='exact'"):
        SearchConfig(hypergrad=hypergrad, unroll_steps=2)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="expected one of"):
        H.get("second_order")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_exact_forward_over_reverse_equals_nested_reverse(dtype, tol):
    """K = 1: the jvp form of the mixed Hessian-vector product and nested grad agree to round-off."""
    cfg = SearchConfig(space=SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(8, 1), nodes=2,
                                         multiplier=2, stem_multiplier=1))
    state = init_search(cfg, torch.Generator().manual_seed(3), dtype=dtype)
    g = torch.Generator().manual_seed(4)
    train = (torch.randn(6, 2, 8, 1, generator=g, dtype=dtype), torch.randint(0, 3, (6,), generator=g))
    valid = (torch.randn(6, 2, 8, 1, generator=g, dtype=dtype), torch.randint(0, 3, (6,), generator=g))
    momentum = T.map(lambda w: 0.1 * torch.randn(w.shape, generator=g, dtype=dtype), state.weights)

    def loss_fn(w, a, b):
        return supernet_loss(w, a, state.stats, b, cfg=cfg)

    kw = dict(xi=0.1, optimizer=sgd(momentum=0.9, weight_decay=3e-2))
    fwd, (lf, _) = H.exact(loss_fn, state.weights, state.alphas, SGDState(momentum), train, valid, hvp="forward", **kw)
    rev, (lr_, _) = H.exact(loss_fn, state.weights, state.alphas, SGDState(momentum), train, valid, hvp="reverse", **kw)
    for kind in ("normal", "reduce"):
        err = (fwd[kind] - rev[kind]).norm() / rev[kind].norm()
        assert err < tol, (kind, float(err))
    assert torch.allclose(lf, lr_)
    with pytest.raises(ValueError, match="hvp must be"):
        H.exact(loss_fn, state.weights, state.alphas, SGDState(momentum), train, valid, hvp="sideways")
