/* A batch's counts, compiled: what sidecar.engine.NumericBlock.add computes with a
 * dozen numpy calls and one `searchsorted` per feature, in one pass over the (rows x
 * features) array (`count`); and what CategoricalChecker.add_slots does with a
 * `bincount` per feature (`count_slots`).
 *
 * count(x, grid, starts, low, high, mean, buckets, counts, sums):
 *   x        float64 (n, k), C-contiguous, every value finite
 *   grid     float64: the features' grids one after another, each sorted
 *   starts   int64 (k + 1): feature j's grid is grid[starts[j]:starts[j + 1]]
 *   low, high, mean   float64 (k): the training range and mean
 * and adds into, all zeroed or accumulated by the caller:
 *   buckets  int64 (k, n): each value's bucket, numpy's searchsorted(grid_j, v, "left")
 *   counts   a list of k int64 arrays, feature j's of its grid's length + 1 (the
 *            windows' own grid counts): counts[j][bucket] += 1
 *   sums     float64 (6, k): values below low, above high (as counts), the distance
 *            below low and above high summed, and the deviations from the mean and
 *            their squares summed
 * The sums add up in row order, where numpy may group them otherwise: they agree to
 * rounding (tests compare both paths with a relative tolerance of 1e-9).
 *
 * `count` releases the GIL while it counts (a batch's numbers take it about 100 µs), as
 * numpy's own loops do, so the serving thread is not kept waiting; the caller must not
 * change the arrays meanwhile (the worker counts under the lock a scrape reads them
 * under). `count_slots` is a few µs a batch: it keeps the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

/* A writable or read-only C-contiguous buffer of `count` 8-byte items (any number when
 * `count` is negative: the caller checks it). */
static int
hold(Buffer *b, PyObject *o, const char *name, char format, Py_ssize_t count, int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, &b->view, flags) < 0) {
        return -1;
    }
    b->held = 1;
    const char *f = b->view.format ? b->view.format : "B";
    if (f[0] == '@') {
        f++; /* native order only: the counts are read and written as this machine's */
    }
    Py_ssize_t itemsize = 8;
    int format_ok = format == 'd' ? f[0] == 'd' && f[1] == 0
                                  : (f[0] == 'q' || f[0] == 'l') && f[1] == 0;
    if (!format_ok || b->view.itemsize != itemsize
        || (count >= 0 && b->view.len != count * itemsize)) {
        PyErr_Format(PyExc_ValueError, "count(): %s must hold %zd %s", name, count,
                     format == 'd' ? "float64 values" : "int64 values");
        return -1;
    }
    return 0;
}

/* A private copy of an int64 buffer's n values: what was checked cannot change after. */
static int64_t *
copied(const Buffer *b, Py_ssize_t n)
{
    int64_t *copy = PyMem_Malloc((n > 0 ? n : 1) * sizeof(int64_t));
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, b->view.buf, n * sizeof(int64_t));
    return copy;
}

static void
release(Buffer *b, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (b[i].held) {
            PyBuffer_Release(&b[i].view);
        }
    }
}

/* Every array of the list `counts` held, writable, as an int64 buffer of any length
 * (the caller checks each length once the bounds are copied). The list's items are
 * held through a tuple (*items): taking a buffer may run Python code (__buffer__, from
 * 3.12) that changes the list. Returns the n buffers, or NULL with an exception set;
 * release them with release(buffers, n) and PyMem_Free. */
static Buffer *
hold_each(PyObject *counts, Py_ssize_t n, const char *function, PyObject **items)
{
    if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != n) {
        PyErr_Format(PyExc_ValueError, "%s(): counts must be a list of %zd arrays", function, n);
        return NULL;
    }
    *items = PyList_AsTuple(counts);
    if (*items == NULL) {
        return NULL;
    }
    Buffer *held = PyMem_Calloc(n > 0 ? n : 1, sizeof(Buffer));
    if (held == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        if (hold(&held[j], PyTuple_GET_ITEM(*items, j), "each of counts", 'q', -1, 1) < 0) {
            release(held, j + 1);
            PyMem_Free(held);
            return NULL;
        }
    }
    return held;
}

static PyObject *
count(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "count(x, grid, starts, low, high, mean, buckets, counts, sums)");
        return NULL;
    }
    Buffer b[8] = {{.held = 0}};
    Buffer *feature_counts = NULL;
    PyObject *items = NULL;
    int64_t *starts = NULL;
    Py_ssize_t k = 0;
    PyObject *result = NULL;
    /* x's shape gives n and k; the others are checked against them. */
    if (PyObject_GetBuffer(args[0], &b[0].view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND)
        < 0) {
        return NULL;
    }
    b[0].held = 1;
    if (b[0].view.ndim != 2 || b[0].view.itemsize != 8 || b[0].view.format == NULL
        || strcmp(b[0].view.format, "d") != 0) {
        PyErr_SetString(PyExc_ValueError, "count(): x must be a 2-d float64 array");
        goto done;
    }
    Py_ssize_t n = b[0].view.shape[0];
    k = b[0].view.shape[1];
    if (k > PY_SSIZE_T_MAX / 64 - 1 || (n > 0 && k > PY_SSIZE_T_MAX / 64 / n)) {
        PyErr_SetString(PyExc_ValueError, "count(): x is too large");
        goto done;
    }
    if (PyObject_GetBuffer(args[1], &b[1].view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        goto done;
    }
    b[1].held = 1;
    if (b[1].view.itemsize != 8 || b[1].view.format == NULL || strcmp(b[1].view.format, "d")) {
        PyErr_SetString(PyExc_ValueError, "count(): grid must be float64");
        goto done;
    }
    if (hold(&b[2], args[2], "starts", 'q', k + 1, 0) < 0
        || hold(&b[3], args[3], "low", 'd', k, 0) < 0
        || hold(&b[4], args[4], "high", 'd', k, 0) < 0
        || hold(&b[5], args[5], "mean", 'd', k, 0) < 0
        || hold(&b[6], args[6], "buckets", 'q', k * n, 1) < 0
        || hold(&b[7], args[8], "sums", 'd', 6 * k, 1) < 0) {
        goto done;
    }
    feature_counts = hold_each(args[7], k, "count", &items);
    if (feature_counts == NULL) {
        goto done;
    }
    /* Every buffer is held: now the bounds, on a copy no other buffer can write to. */
    starts = copied(&b[2], k + 1);
    if (starts == NULL) {
        goto done;
    }
    Py_ssize_t grid_size = b[1].view.len / 8;
    for (Py_ssize_t j = 0; j < k; j++) {
        if (starts[j] < 0 || starts[j] > starts[j + 1] || starts[j + 1] > grid_size) {
            PyErr_Format(PyExc_ValueError, "count(): feature %zd's grid is out of bounds", j);
            goto done;
        }
        if (feature_counts[j].view.len != (starts[j + 1] - starts[j] + 1) * 8) {
            PyErr_Format(PyExc_ValueError, "count(): each of counts must hold its grid's "
                         "length + 1 int64 values (feature %zd)", j);
            goto done;
        }
    }
    const double *x = b[0].view.buf, *grid = b[1].view.buf;
    const double *low = b[3].view.buf, *high = b[4].view.buf, *mean = b[5].view.buf;
    int64_t *buckets = b[6].view.buf;
    double *sums = b[7].view.buf;
    double *below = sums, *above = sums + k, *below_sum = sums + 2 * k,
           *above_sum = sums + 3 * k, *sum_dev = sums + 4 * k, *sumsq_dev = sums + 5 * k;
    /* Only the held buffers from here on: the serving thread may run meanwhile. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *row = x + i * k;
        for (Py_ssize_t j = 0; j < k; j++) {
            double v = row[j];
            if (v < low[j]) {
                below[j] += 1.0;
                below_sum[j] += low[j] - v;
            }
            if (v > high[j]) {
                above[j] += 1.0;
                above_sum[j] += v - high[j];
            }
            double dev = v - mean[j];
            sum_dev[j] += dev;
            sumsq_dev[j] += dev * dev;
            /* numpy's searchsorted, side="left": the grid values below v */
            const double *g = grid + starts[j];
            Py_ssize_t lo = 0, hi = starts[j + 1] - starts[j];
            while (lo < hi) {
                Py_ssize_t mid = lo + ((hi - lo) >> 1);
                if (g[mid] < v) {
                    lo = mid + 1;
                }
                else {
                    hi = mid;
                }
            }
            buckets[j * n + i] = lo;
            ((int64_t *)feature_counts[j].view.buf)[lo] += 1;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(b, 8);
    if (feature_counts != NULL) {
        release(feature_counts, k);
        PyMem_Free(feature_counts);
    }
    PyMem_Free(starts);
    Py_XDECREF(items);
    return result;
}

/* count_slots(slots, sizes, counts, totals):
 *   slots    int64 (n, c), C-contiguous: each value's slot in its feature's index
 *   sizes    int64 (c): feature j's vocabulary size; its slots are 0..size - 1 (known
 *            values), size (unseen), size + 1 (null), size + 2 (absent)
 *   counts   a list of c int64 arrays of size + 1 (the windows' vocabulary counts):
 *            counts[j][slot] += 1 for the known and unseen slots
 *   totals   int64 (c, 3), added into: unseen, null and absent per feature
 * A slot outside 0..size + 2 raises ValueError before anything is counted (numpy's
 * bincount path raises too). */
static PyObject *
count_slots(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "count_slots(slots, sizes, counts, totals)");
        return NULL;
    }
    Buffer b[3] = {{.held = 0}};
    Buffer *feature_counts = NULL;
    PyObject *items = NULL;
    int64_t *sizes = NULL;
    Py_ssize_t c = 0;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[0], &b[0].view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND)
        < 0) {
        return NULL;
    }
    b[0].held = 1;
    const char *f = b[0].view.format;
    if (b[0].view.ndim != 2 || b[0].view.itemsize != 8 || f == NULL
        || !((f[0] == 'l' || f[0] == 'q') && f[1] == 0)) {
        PyErr_SetString(PyExc_ValueError, "count_slots(): slots must be a 2-d int64 array");
        goto done;
    }
    Py_ssize_t n = b[0].view.shape[0];
    c = b[0].view.shape[1];
    if (hold(&b[1], args[1], "sizes", 'q', c, 0) < 0
        || hold(&b[2], args[3], "totals", 'q', 3 * c, 1) < 0) {
        goto done;
    }
    feature_counts = hold_each(args[2], c, "count_slots", &items);
    if (feature_counts == NULL) {
        goto done;
    }
    /* Every buffer is held: now the bounds, on a copy no other buffer can write to. */
    sizes = copied(&b[1], c);
    if (sizes == NULL) {
        goto done;
    }
    for (Py_ssize_t j = 0; j < c; j++) {
        if (sizes[j] < 0 || sizes[j] > PY_SSIZE_T_MAX / 16) {
            PyErr_Format(PyExc_ValueError, "count_slots(): feature %zd's size is out of range",
                         j);
            goto done;
        }
        if (feature_counts[j].view.len != (sizes[j] + 1) * 8) {
            PyErr_Format(PyExc_ValueError, "count_slots(): each of counts must hold its "
                         "vocabulary's size + 1 int64 values (feature %zd)", j);
            goto done;
        }
    }
    const int64_t *slots = b[0].view.buf;
    for (Py_ssize_t i = 0; i < n * c; i++) {
        int64_t slot = slots[i];
        if (slot < 0 || slot > sizes[i % c] + 2) {
            PyErr_Format(PyExc_ValueError, "count_slots(): slot %lld of feature %zd is out of "
                         "range", (long long)slot, i % c);
            goto done;
        }
    }
    int64_t *totals = b[2].view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t *row = slots + i * c;
        for (Py_ssize_t j = 0; j < c; j++) {
            int64_t slot = row[j], size = sizes[j];
            if (slot <= size) {
                ((int64_t *)feature_counts[j].view.buf)[slot] += 1;
                totals[3 * j] += slot == size;
            }
            else {
                totals[3 * j + (slot == size + 1 ? 1 : 2)] += 1;
            }
        }
    }
    result = Py_NewRef(Py_None);
done:
    release(b, 3);
    if (feature_counts != NULL) {
        release(feature_counts, c);
        PyMem_Free(feature_counts);
    }
    PyMem_Free(sizes);
    Py_XDECREF(items);
    return result;
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
     "Add a (rows x features) float64 array's counts and sums (see the module doc)."},
    {"count_slots", (PyCFunction)(void (*)(void))count_slots, METH_FASTCALL,
     "Add a (rows x features) int64 array of category slots' counts (see above)."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sidecar._block",
    .m_doc = "A batch's counts, compiled (see sidecar.engine: NumericBlock, check_columns).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__block(void)
{
    return PyModule_Create(&module);
}
