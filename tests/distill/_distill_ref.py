"""Independent float64 numpy implementations of the papers' formulas, written
with explicit loops where the paper sums over pairs or triples."""

import numpy as np


def log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def kd(s, t, T):
    """Hinton et al. 2015: T^2 KL(softmax(t/T) || softmax(s/T))."""
    lp, lq = log_softmax(np.asarray(t) / T), log_softmax(np.asarray(s) / T)
    p = np.exp(lp)
    return T * T * np.sum(p * (lp - lq), axis=-1)


def soft_cross_entropy(s, q, T):
    return -T * T * np.sum(np.asarray(q, np.float64) * log_softmax(np.asarray(s) / T), axis=-1)


def kd_with_labels(s, t, labels, alpha, T):
    ls = log_softmax(s)
    hard = -np.take_along_axis(ls, np.asarray(labels)[..., None], axis=-1)[..., 0]
    return alpha * kd(s, t, T) + (1 - alpha) * hard


def hint(s, t):
    """FitNets MSE per example over all non-batch axes."""
    d = np.asarray(s, np.float64) - np.asarray(t, np.float64)
    return np.array([np.mean(d[i] ** 2) for i in range(d.shape[0])])


def cosine(s, t):
    s = np.asarray(s, np.float64).reshape(len(s), -1)
    t = np.asarray(t, np.float64).reshape(len(t), -1)
    return np.array(
        [1 - s[i] @ t[i] / (np.linalg.norm(s[i]) * np.linalg.norm(t[i])) for i in range(len(s))]
    )


def attention_transfer(s, t, p):
    """Zagoruyko & Komodakis: Q = vec(sum_c |A_c|^p) / ||.||_2; mean_j (Q_s - Q_t)_j^2.
    Inputs NHWC; the sum over channels (paper) rather than the mean."""
    out = []
    for a, b in zip(np.asarray(s, np.float64), np.asarray(t, np.float64)):
        qa = (np.abs(a) ** p).sum(axis=-1).ravel()
        qb = (np.abs(b) ** p).sum(axis=-1).ravel()
        qa, qb = qa / np.linalg.norm(qa), qb / np.linalg.norm(qb)
        out.append(np.mean((qa - qb) ** 2))
    return np.array(out)


def huber(x, delta=1.0):
    x = abs(x)
    return 0.5 * x * x if x <= delta else delta * (x - 0.5 * delta)


def rkd_distance(s, t, delta=1.0):
    """Park et al. 2019, distance-wise; per example i: mean_j huber(psi_s - psi_t)."""
    s = np.asarray(s, np.float64).reshape(len(s), -1)
    t = np.asarray(t, np.float64).reshape(len(t), -1)
    n = len(s)

    def psi(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        mu = sum(d[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return d / mu

    ps, pt = psi(s), psi(t)
    return np.array(
        [np.mean([huber(ps[i, j] - pt[i, j], delta) for j in range(n)]) for i in range(n)]
    )


def rkd_angle(s, t, delta=1.0):
    """Park et al. 2019, angle-wise; vertex a: mean_{b,c} huber(cos angle_s - cos angle_t)."""
    s = np.asarray(s, np.float64).reshape(len(s), -1)
    t = np.asarray(t, np.float64).reshape(len(t), -1)
    n = len(s)

    def cos_angle(e, a, b, c):
        u, v = e[b] - e[a], e[c] - e[a]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        return 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)

    out = []
    for a in range(n):
        terms = [
            huber(cos_angle(s, a, b, c) - cos_angle(t, a, b, c), delta)
            for b in range(n)
            for c in range(n)
        ]
        out.append(np.mean(terms))
    return np.array(out)


def pkt(s, t):
    """Passalis & Tefas 2018: KL of the cosine-kernel conditionals p_{j|i}, j != i."""
    s = np.asarray(s, np.float64).reshape(len(s), -1)
    t = np.asarray(t, np.float64).reshape(len(t), -1)
    n = len(s)

    def cond(e):
        k = np.array(
            [[(e[i] @ e[j] / (np.linalg.norm(e[i]) * np.linalg.norm(e[j])) + 1) / 2
              for j in range(n)] for i in range(n)]
        )
        p = np.zeros((n, n))
        for i in range(n):
            total = sum(k[i, j] for j in range(n) if j != i)
            for j in range(n):
                if j != i:
                    p[i, j] = k[i, j] / total
        return p

    p, q = cond(t), cond(s)
    return np.array(
        [sum(p[i, j] * np.log(p[i, j] / q[i, j]) for j in range(n) if j != i) for i in range(n)]
    )
