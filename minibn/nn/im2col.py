"""Patches of channels-last images: a strided view, one copy, and its adjoint without ``add.at``.

For ``x`` of shape (N, H, W, C) zero-padded by (ph, pw) to ``x_pad`` of shape
(N, Hp, Wp, C) = (N, H + 2 ph, W + 2 pw, C), a (kh, kw) window moved with stride
(sh, sw) has

    Ho = (Hp - kh) // sh + 1,    Wo = (Wp - kw) // sw + 1

positions, and

    windows[n, ho, wo, i, j, c] = x_pad[n, ho*sh + i, wo*sw + j, c]

is a read-only strided view of ``x_pad`` (no copy). :func:`im2col` copies it once into
the matrix ``cols`` of shape (N*Ho*Wo, kh*kw*C), row (n, ho, wo), column (i, j, c): a
convolution is then one GEMM with the kernel reshaped to (kh*kw*C, out).

:func:`col2im` is the adjoint of "pad, then im2col" (the transpose of that linear map):
every entry of ``cols`` is added back to the input position it was read from,

    dx[n, ho*sh + i - ph, wo*sw + j - pw, c] += dcols[(n, ho, wo), (i, j, c)]

dropping the entries that were read from the padding. It loops over the kh*kw kernel
offsets (i, j) and adds one strided slice per offset: within one offset the positions
ho*sh + i are distinct, so no two writes collide and no scatter-add is needed. This is
deterministic and the same code on NumPy and CuPy.

Layers build ``cols`` for a few images at a time (:func:`image_chunks`), never for the
whole batch at once.
"""

from minibn import backend


def pair(value, arg, layer, minimum=1):
    """``value`` (an int or a pair of ints, each >= minimum) as a tuple (rows, cols)."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if (len(items) != 2 or any(isinstance(v, bool) or not hasattr(v, "__index__") for v in items)
            or min(int(v) for v in items) < minimum):
        raise ValueError(f"{layer}: {arg} must be an int >= {minimum} or a pair of them, got {value!r}")
    return tuple(int(v) for v in items)


def output_size(size, kernel, stride, padding):
    """Number of window positions along one axis: (size + 2 padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def span(offset, count, stride, size):
    """The positions t = k*stride + offset (k = 0..count-1) that fall inside [0, size).

    Returns ``(ks, ts)``: a slice over k and the matching strided slice over t, so that
    ``a[ts]`` and ``b[ks]`` pair up element by element (both may be empty).
    """
    first = max(0, -(offset // stride))                              # k*stride + offset >= 0
    last = max(first, min(count, (size - 1 - offset) // stride + 1))  # k*stride + offset < size
    t0 = first * stride + offset
    return slice(first, last), slice(t0, t0 + (last - first) * stride, stride)


def pad(x, ph, pw):
    """A new zero-padded copy of x (N, H, W, C) of shape (N, H + 2 ph, W + 2 pw, C); x itself when no padding."""
    if ph == 0 and pw == 0:
        return x
    xp = backend.array_module(x)
    n, h, w, c = x.shape
    out = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    out[:, ph:ph + h, pw:pw + w, :] = x
    return out


def windows(x_pad, kh, kw, sh, sw):
    """The (N, Ho, Wo, kh, kw, C) strided view of every window of ``x_pad`` (no copy; do not write to it)."""
    xp = backend.array_module(x_pad)
    n, hp, wp, c = x_pad.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s_n, s_h, s_w, s_c = x_pad.strides
    return xp.lib.stride_tricks.as_strided(
        x_pad, shape=(n, ho, wo, kh, kw, c), strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))


def im2col(x_pad, kh, kw, sh, sw):
    """``cols`` of shape (N*Ho*Wo, kh*kw*C): the windows of ``x_pad`` copied once into a matrix."""
    view = windows(x_pad, kh, kw, sh, sw)
    n, ho, wo = view.shape[:3]
    return view.reshape(n * ho * wo, -1)  # the one copy: the view is not contiguous


def col2im(dcols, x_shape, kh, kw, sh, sw, ph, pw, out=None):
    """The adjoint of ``im2col(pad(x))``: dx of shape ``x_shape`` = (N, H, W, C), padding dropped.

    ``dcols`` has shape (N*Ho*Wo, kh*kw*C); the result is written to ``out`` when given.
    One strided slice-add per kernel offset.
    """
    xp = backend.array_module(dcols)
    n, h, w, c = x_shape
    ho, wo = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    d6 = dcols.reshape(n, ho, wo, kh, kw, c)
    dx = xp.empty(x_shape, dtype=dcols.dtype) if out is None else out
    dx[...] = 0
    for i in range(kh):
        rows_out, rows_in = span(i - ph, ho, sh, h)
        for j in range(kw):
            cols_out, cols_in = span(j - pw, wo, sw, w)
            dx[:, rows_in, cols_in, :] += d6[:, rows_out, cols_out, i, j, :]
    return dx


#: Bytes of patch matrix built at a time on NumPy. Measured on a shared 2-core EPYC (conv
#: 64->64 block, batch 128): with one BLAS thread 2-24 MB blocks all beat one whole-batch
#: block (cache, page faults); with two threads blocks under ~8 MB lose, as every GEMM call
#: pays a thread hand-off. 16 MB sits below glibc's largest mmap threshold (32 MB).
CHUNK_BYTES = 16 * 2**20


def image_chunks(xp, n, bytes_per_image, budget=None):
    """Slices of the batch axis (at least one image each) whose patch matrices take at most
    ``budget`` (default :data:`CHUNK_BYTES`) bytes.

    Why: on NumPy a whole-batch patch matrix (hundreds of MB for a VGG layer) is mapped,
    page-faulted and zeroed afresh at every call, and would sit next to the activations;
    blocks below glibc's mmap threshold are recycled by malloc instead and stay near the
    caches while the GEMM reads them. On CuPy the memory pool recycles blocks, and one
    large GEMM is fastest, so the whole batch is one block.
    """
    budget = CHUNK_BYTES if budget is None else budget
    per = n if backend.name_of(xp) == "cupy" else max(1, budget // max(1, bytes_per_image))
    return [slice(a, min(n, a + per)) for a in range(0, n, per)]
