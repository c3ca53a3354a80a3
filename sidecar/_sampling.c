/* The sampler's `take()`, compiled: the decision the serving path asks for once per
 * sampled request (sidecar/sampling.py has the Python original and the reasons).
 *
 * `SamplerCore` holds the sampler's state in a struct whose fields are the Python
 * attributes of the same names, so the Python methods of `PythonSampler` (a base of
 * the compiled `Sampler`) read and write the same state. `take()` runs the common
 * case in C: the clock (CLOCK_MONOTONIC directly when the clock is time.monotonic,
 * as time.monotonic itself reads it on Linux), the token bucket, and the next gap from
 * those drawn ahead, and adds up the requests the cap thinned (drawn into
 * `rate_limited` by the Python `_settle` when it is read). The rare steps call the
 * Python methods by name: `_estimate` once a second, `_draw_ahead` once per GAPS_AHEAD
 * samples. Each is called where the Python `take()` calls it, and the state is read
 * again after it returns, so the two give the same answers step by step.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>

/* As in sidecar/sampling.py. */
#define ESTIMATE_SECONDS 1.0
#define OVERLOAD_ESTIMATE_SECONDS 0.1

#include "_sampling.h"

static PyObject *s_estimate, *s_draw, *s_draw_ahead, *monotonic;

static int
read_clock(SamplerCore *self, double *now)
{
    PyObject *clock = self->clock;
    if (clock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "sampler has no clock");
        return -1;
    }
    if (clock == monotonic) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
            /* time.monotonic's own arithmetic: nanoseconds, then seconds. */
            *now = (double)((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
            return 0;
        }
    }
    Py_INCREF(clock); /* the call may replace self->clock */
    PyObject *value = PyObject_CallNoArgs(clock);
    Py_DECREF(clock);
    if (value == NULL) {
        return -1;
    }
    /* What Python's `now - self._estimated_at` takes: a float or an int. */
    if (!PyFloat_Check(value) && !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "the sampler's clock returned %.200s, not a number",
                     Py_TYPE(value)->tp_name);
        Py_DECREF(value);
        return -1;
    }
    *now = PyFloat_Check(value) ? PyFloat_AS_DOUBLE(value) : PyLong_AsDouble(value);
    Py_DECREF(value);
    return *now == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* self.<name>(arg): one of the rare steps, in Python. */
static int
call_step(SamplerCore *self, PyObject *name, PyObject *arg)
{
    if (arg == NULL) {
        return -1;
    }
    PyObject *result = PyObject_CallMethodOneArg((PyObject *)self, name, arg);
    Py_DECREF(arg);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static int
estimate(SamplerCore *self, double now)
{
    return call_step(self, s_estimate, PyFloat_FromDouble(now));
}

/* A gap or countdown the Python side returned (stolen), as a C integer. */
static int
as_count(PyObject *value, long long *out)
{
    if (value == NULL) {
        return -1;
    }
    long long count = PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (count == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = count;
    return 0;
}

/* The next gap: self._gaps.pop() if there is one, else self._draw_ahead(). A `_gaps`
 * that is not a list goes through the Python `_draw` whole (it sets _gap and _drawn). */
static int
draw(SamplerCore *self)
{
    PyObject *gaps = self->gaps;
    if (gaps == NULL || !PyList_CheckExact(gaps)) {
        return as_count(PyObject_CallMethodNoArgs((PyObject *)self, s_draw), &self->countdown);
    }
    PyObject *item;
    Py_ssize_t n = PyList_GET_SIZE(gaps);
    if (n > 0) {
        item = Py_NewRef(PyList_GET_ITEM(gaps, n - 1));
        if (PyList_SetSlice(gaps, n - 1, n, NULL) < 0) {
            Py_DECREF(item);
            return -1;
        }
    }
    else {
        item = PyObject_CallMethodNoArgs((PyObject *)self, s_draw_ahead);
    }
    long long gap, drawn;
    if (as_count(item, &gap) < 0) {
        return -1;
    }
    if (__builtin_add_overflow(self->drawn, gap, &drawn)) {
        PyErr_SetString(PyExc_OverflowError, "sampler: more than 2**63 requests counted");
        return -1;
    }
    self->gap = gap;
    self->drawn = drawn;
    self->countdown = gap;
    return 0;
}

static PyObject *
sampler_take(SamplerCore *self, PyObject *unused)
{
    long long skipped, thinned, refused;
    if (__builtin_sub_overflow(self->gap, 1LL, &skipped)) {
        PyErr_SetString(PyExc_OverflowError, "sampler: gap out of range");
        return NULL;
    }
    if (skipped && self->thinning < 1.0) {
        if (__builtin_add_overflow(self->thinned, skipped, &thinned)) {
            PyErr_SetString(PyExc_OverflowError, "sampler: more than 2**63 requests thinned");
            return NULL;
        }
        self->thinned = thinned;
    }
    double now;
    if (read_clock(self, &now) < 0) {
        return NULL;
    }
    if (now - self->estimated_at >= ESTIMATE_SECONDS && estimate(self, now) < 0) {
        return NULL;
    }
    double tokens = self->tokens + (now - self->filled_at) * self->max_per_second;
    if (tokens > self->capacity) {
        tokens = self->capacity;
    }
    self->filled_at = now;
    int taken = tokens >= 1.0;
    if (taken) {
        self->tokens = tokens - 1.0;
    }
    else {
        self->tokens = tokens;
        if (__builtin_add_overflow(self->refused, 1LL, &refused)) {
            PyErr_SetString(PyExc_OverflowError, "sampler: more than 2**63 requests refused");
            return NULL;
        }
        self->refused = refused;
        if (now - self->estimated_at >= OVERLOAD_ESTIMATE_SECONDS && estimate(self, now) < 0) {
            return NULL;
        }
    }
    if (draw(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(taken);
}

static PyMethodDef sampler_methods[] = {
    {"take", (PyCFunction)sampler_take, METH_NOARGS,
     "The countdown ran out: decide this request, draw the next gap."},
    {NULL},
};

#define MEMBER(name, type, field, doc) {name, type, offsetof(SamplerCore, field), 0, doc}

static PyMemberDef sampler_members[] = {
    MEMBER("countdown", T_LONGLONG, countdown, "requests left before the next take()"),
    MEMBER("_gap", T_LONGLONG, gap, "the current gap"),
    MEMBER("_drawn", T_LONGLONG, drawn, "requests covered by the gaps drawn so far"),
    MEMBER("_refused", T_LONGLONG, refused, "requests the token bucket refused"),
    MEMBER("_thinned", T_LONGLONG, thinned, "requests of gaps ended while the cap thinned"),
    MEMBER("thinning", T_DOUBLE, thinning, "the share of selected requests the cap lets through"),
    MEMBER("max_per_second", T_DOUBLE, max_per_second, "the cap"),
    MEMBER("_estimated_at", T_DOUBLE, estimated_at, "when the thinning was estimated"),
    MEMBER("_tokens", T_DOUBLE, tokens, "the bucket's tokens"),
    MEMBER("_filled_at", T_DOUBLE, filled_at, "when the bucket was last filled"),
    MEMBER("_capacity", T_DOUBLE, capacity, "the bucket's capacity"),
    MEMBER("_gaps", T_OBJECT_EX, gaps, "gaps drawn ahead, taken from the end"),
    MEMBER("clock", T_OBJECT_EX, clock, "the clock (seconds)"),
    {NULL},
};

static int
sampler_traverse(SamplerCore *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->gaps);
    Py_VISIT(self->clock);
    return 0;
}

static int
sampler_clear(SamplerCore *self)
{
    Py_CLEAR(self->gaps);
    Py_CLEAR(self->clock);
    return 0;
}

static void
sampler_dealloc(SamplerCore *self)
{
    PyObject_GC_UnTrack(self);
    sampler_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyType_Slot sampler_slots[] = {
    {Py_tp_doc, "The compiled sampler's state and take() (see sidecar/sampling.py)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, sampler_methods},
    {Py_tp_members, sampler_members},
    {Py_tp_traverse, sampler_traverse},
    {Py_tp_clear, sampler_clear},
    {Py_tp_dealloc, sampler_dealloc},
    {0, NULL},
};

static PyType_Spec sampler_spec = {
    .name = "sidecar._sampling.SamplerCore",
    .basicsize = sizeof(SamplerCore),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = sampler_slots,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sidecar._sampling",
    .m_doc = "The sampler's take(), compiled (see sidecar/sampling.py).",
    .m_size = -1,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__sampling(void)
{
    if (intern(&s_estimate, "_estimate") < 0
        || intern(&s_draw, "_draw") < 0 || intern(&s_draw_ahead, "_draw_ahead") < 0) {
        return NULL;
    }
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL) {
        return NULL;
    }
    monotonic = PyObject_GetAttrString(time, "monotonic");
    Py_DECREF(time);
    if (monotonic == NULL) {
        return NULL;
    }
    /* The fast path reads the clock time.monotonic reads, so only for the built-in
     * itself: a stand-in patched over it (freezegun) is called like any clock. */
    if (!PyCFunction_Check(monotonic)
        || strcmp(((PyCFunctionObject *)monotonic)->m_ml->ml_name, "monotonic") != 0) {
        Py_CLEAR(monotonic);
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *type = PyType_FromSpec(&sampler_spec);
    if (type == NULL || PyModule_AddObject(m, "SamplerCore", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
