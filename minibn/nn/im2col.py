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
whole batch at once, with :func:`im2col_threaded` and :func:`col2im_threaded`: the same
copies and adds for blocks of images on the thread pool of :mod:`minibn.parallel`.
"""

from minibn import backend, parallel


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


def _pad_into(x, out, ph, pw):
    """:func:`pad` written into ``out``: the four borders zeroed, x copied inside them."""
    h, w = x.shape[1:3]
    out[:, :ph] = 0
    out[:, ph + h:] = 0
    out[:, ph:ph + h, :pw] = 0
    out[:, ph:ph + h, pw + w:] = 0
    out[:, ph:ph + h, pw:pw + w] = x


def windows(x_pad, kh, kw, sh, sw):
    """The (N, Ho, Wo, kh, kw, C) strided view of every window of ``x_pad`` (no copy; do not write to it)."""
    xp = backend.array_module(x_pad)
    n, hp, wp, c = x_pad.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s_n, s_h, s_w, s_c = x_pad.strides
    return xp.lib.stride_tricks.as_strided(
        x_pad, shape=(n, ho, wo, kh, kw, c), strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))


def im2col(x_pad, kh, kw, sh, sw, out=None):
    """``cols`` of shape (N*Ho*Wo, kh*kw*C): the windows of ``x_pad`` copied once into a matrix
    (into ``out``, a C-contiguous array of that shape, when given)."""
    view = windows(x_pad, kh, kw, sh, sw)
    n, ho, wo = view.shape[:3]
    if out is None:
        return view.reshape(n * ho * wo, -1)  # the one copy: the view is not contiguous
    out.reshape(view.shape)[...] = view
    return out


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


def im2col_threaded(x, kh, kw, sh, sw, ph=0, pw=0):
    """``im2col(pad(x, ph, pw), kh, kw, sh, sw)``, padded and copied for blocks of images on
    the thread pool of :mod:`minibn.parallel` (a block's padded images are still in cache when
    its patches are copied). The same matrix bit for bit: it is copies only."""
    xp = backend.array_module(x)
    n, h, w, c = x.shape
    x_pad = x if ph == 0 and pw == 0 else xp.empty((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    view = windows(x_pad, kh, kw, sh, sw)
    cols = xp.empty((view.shape[0] * view.shape[1] * view.shape[2], kh * kw * c), dtype=x.dtype)
    by_image = cols.reshape(view.shape)

    def kernel(rows):
        if x_pad is not x:
            _pad_into(x[rows], x_pad[rows], ph, pw)
        by_image[rows] = view[rows]

    parallel.over_rows(kernel, x_pad)      # blocks of about 1 MB of images, 9 MB of patches for 3x3
    return cols


def col2im_threaded(dcols, x_shape, kh, kw, sh, sw, ph, pw, out=None):
    """:func:`col2im` for blocks of images on the thread pool: the same adds in the same order
    for every entry, so the same dx bit for bit."""
    xp = backend.array_module(dcols)
    n, h, w, _ = x_shape
    dx = xp.empty(x_shape, dtype=dcols.dtype) if out is None else out
    by_image = dcols.reshape(n, -1, dcols.shape[1])
    parallel.over_rows(lambda rows: col2im(by_image[rows].reshape(-1, dcols.shape[1]), dx[rows].shape,
                                           kh, kw, sh, sw, ph, pw, out=dx[rows]), dx)
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
