"""Naive loop references for the fast layers (conv, max-pool), written for clarity, not speed.

They index one output position at a time, straight from the definitions, and share
no code with minibn.nn.im2col.
"""

import numpy as np


def conv2d(x, W, b=None, stride=(1, 1), padding=(0, 0)):
    """y[n, ho, wo, o] = b[o] + sum_{i,j,c} x_pad[n, ho*sh + i, wo*sw + j, c] W[i, j, c, o] (NumPy, NHWC)."""
    n, h, w, c = x.shape
    kh, kw, _, out = W.shape
    (sh, sw), (ph, pw) = stride, padding
    x_pad = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    x_pad[:, ph:ph + h, pw:pw + w, :] = x
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, ho, wo, out), dtype=x.dtype)
    for r in range(ho):
        for s in range(wo):
            patch = x_pad[:, r * sh:r * sh + kh, s * sw:s * sw + kw, :]          # (n, kh, kw, c)
            for o in range(out):
                y[:, r, s, o] = (patch * W[:, :, :, o]).sum(axis=(1, 2, 3))
    if b is not None:
        y += b
    return y


def conv2d_input_gradient(dy, W, x_shape, stride=(1, 1), padding=(0, 0)):
    """dx of :func:`conv2d`: every dy[n, ho, wo, :] W[i, j]^T goes back to the input position its window read."""
    n, h, w, c = x_shape
    kh, kw = W.shape[:2]
    (sh, sw), (ph, pw) = stride, padding
    dx_pad = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dy.dtype)
    for r in range(dy.shape[1]):
        for s in range(dy.shape[2]):
            for i in range(kh):
                for j in range(kw):
                    dx_pad[:, r * sh + i, s * sw + j, :] += dy[:, r, s, :] @ W[i, j].T
    return dx_pad[:, ph:ph + h, pw:pw + w, :]


def conv2d_weight_gradient(x, dy, W_shape, stride=(1, 1), padding=(0, 0)):
    """dW of :func:`conv2d`: dW[i, j] = sum over batch and positions of x_pad-window(i, j)^T dy."""
    n, h, w, c = x.shape
    kh, kw = W_shape[:2]
    (sh, sw), (ph, pw) = stride, padding
    x_pad = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    x_pad[:, ph:ph + h, pw:pw + w, :] = x
    dW = np.zeros(W_shape, dtype=x.dtype)
    for r in range(dy.shape[1]):
        for s in range(dy.shape[2]):
            for i in range(kh):
                for j in range(kw):
                    dW[i, j] += x_pad[:, r * sh + i, s * sw + j, :].T @ dy[:, r, s, :]
    return dW


def max_pool2d(x, kernel=(2, 2), stride=(2, 2)):
    """(y, dx_of) for NumPy x (N, H, W, C): the window maxima, and a function dy -> dx that
    sends each dy to the first maximum of its window in row-major order."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n, ho, wo, c), dtype=x.dtype)
    where = {}
    for a in range(n):
        for r in range(ho):
            for s in range(wo):
                for ch in range(c):
                    window = x[a, r * sh:r * sh + kh, s * sw:s * sw + kw, ch]
                    first = int(np.argmax(window))            # np.argmax: first occurrence, row-major
                    y[a, r, s, ch] = window.flat[first]
                    where[(a, r, s, ch)] = (a, r * sh + first // kw, s * sw + first % kw, ch)

    def dx_of(dy):
        dx = np.zeros_like(x)
        for out_index, in_index in where.items():
            dx[in_index] += dy[out_index]
        return dx

    return y, dx_of
