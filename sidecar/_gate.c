/* The middleware's per-request gate, compiled: decide in C whether a request is one
 * to sample, and hand every other one to the app without running any Python.
 *
 * SkewMiddleware subclasses `Gate`. A call looks at the scope (type, method, path),
 * finds the path's target in the middleware's `_routed` cache and counts its sampler
 * down, all through the C API; an unsampled request then returns `app(scope, receive,
 * send)`, the app's own coroutine. A request whose countdown ran out is tapped here
 * too, as the middleware's `_sampled` would tap it, where the compiled tap was built.
 * Anything else (a path not cached yet, lifespan, websocket, the debug page, a scope
 * or attribute of a type not handled here) goes to the Python method `_dispatch`,
 * which does exactly what the pure-Python gate (sidecar/gate.py) does for every
 * request. So the C path only ever skips work whose outcome is "pass the request
 * through untouched" or "tap it", and it raises only what the Python path would raise
 * (a lookup that fails with an exception raises it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_counted.h"
#include "_sampling.h"

typedef struct {
    PyObject_HEAD
    PyObject *app;
    PyObject *methods;     /* frozenset of upper-case methods that are watched */
    PyObject *routed;      /* dict: path -> target (or None: not watched) */
    PyObject *debug_paths; /* frozenset, empty unless the debug page is served */
    PyObject *max_body_bytes;
    vectorcallfunc vectorcall;
} Gate;

static PyObject *s_type, *s_http, *s_method, *s_path, *s_sampler, *s_countdown,
    *s_dispatch, *s_sampled, *s_monitor, *s_queue, *s_sample_responses, *s_take, *s_started,
    *s_start, *s_receive, *s_send;
/* sidecar._tap.Tap, or NULL where it was not built: sampled requests go to `_sampled`. */
static PyObject *tap_type;
/* sidecar._sampling.SamplerCore, or NULL where it was not built: a sampler of that
 * type is counted down in its struct, unless its class replaced `countdown` (a
 * property, say). `countdown_member` is SamplerCore's own descriptor; `plain_type`
 * the last class seen to keep it. */
static PyTypeObject *sampler_core, *plain_type;
static PyObject *countdown_member;

/* Whether the sampler's class is SamplerCore's, countdown and all. */
static int
counts_in_struct(PyObject *sampler)
{
    PyTypeObject *type = Py_TYPE(sampler);
    if (type == plain_type) {
        return 1;
    }
    if (sampler_core == NULL || !PyType_IsSubtype(type, sampler_core)
        || _PyType_Lookup(type, s_countdown) != countdown_member) {
        return 0;
    }
    Py_XSETREF(plain_type, (PyTypeObject *)Py_NewRef(type));
    return 1;
}

static PyObject *
slow(Gate *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    /* self._dispatch(*args): the whole decision in Python. */
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8];
    PyObject **stack = small;
    if (total + 1 > 8) {
        stack = PyMem_Malloc((total + 1) * sizeof(PyObject *));
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    stack[0] = (PyObject *)self;
    for (Py_ssize_t i = 0; i < total; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *result = PyObject_VectorcallMethod(s_dispatch, stack, (nargs + 1), kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return result;
}

/* Count the target's sampler down by one. Returns 1 when the countdown ran out (this
 * request may be sampled), 0 to keep counting, -1 with an exception set (the Python
 * path would raise it too), or -2 with none: a countdown this code does not handle
 * (not an int, or beyond 64 bits), left unchanged for the Python path. */
static int
count_down(PyObject *target)
{
    PyObject *sampler = PyObject_GetAttr(target, s_sampler);
    if (sampler == NULL) {
        return -1;
    }
    if (counts_in_struct(sampler)) {
        /* The compiled sampler: its countdown is a C integer, decremented in place. */
        SamplerCore *core = (SamplerCore *)sampler;
        int due = -2; /* at the bottom of 64 bits: left to the Python path */
        if (core->countdown != LLONG_MIN) {
            due = --core->countdown <= 0;
        }
        Py_DECREF(sampler);
        return due;
    }
    PyObject *current = PyObject_GetAttr(sampler, s_countdown);
    if (current == NULL) {
        Py_DECREF(sampler);
        return -1;
    }
    int overflow = 1;
    long long value = 0;
    if (PyLong_CheckExact(current)) {
        value = PyLong_AsLongLongAndOverflow(current, &overflow); /* an int: no error */
    }
    Py_DECREF(current);
    if (overflow || value == LLONG_MIN) {
        Py_DECREF(sampler);
        return -2;
    }
    PyObject *next = PyLong_FromLongLong(value - 1);
    int failed = next == NULL || PyObject_SetAttr(sampler, s_countdown, next) < 0;
    Py_XDECREF(next);
    Py_DECREF(sampler);
    if (failed) {
        return -1;
    }
    return value - 1 <= 0;
}

/* The tap of a request whose countdown ran out, unless the cap refuses it: its receive
 * and send (the server's own send when responses are not read) in *receive and *send,
 * 1; 0 when the cap refused; -1 with an exception set. The Python `_sampled`'s try. */
static int
tapped(PyObject *target, PyObject *monitor, PyObject *limit, PyObject *const *args,
       PyObject **receive, PyObject **send)
{
    PyObject *sampler = PyObject_GetAttr(target, s_sampler);
    if (sampler == NULL) {
        return -1;
    }
    PyObject *taken = PyObject_CallMethodNoArgs(sampler, s_take);
    Py_DECREF(sampler);
    int truth = taken == NULL ? -1 : PyObject_IsTrue(taken);
    Py_XDECREF(taken);
    if (truth <= 0) {
        return truth;
    }
    PyObject *started = PyObject_GetAttr(monitor, s_started);
    truth = started == NULL ? -1 : PyObject_IsTrue(started);
    Py_XDECREF(started);
    if (truth == 0) { /* mounted sub-apps never see lifespan events */
        PyObject *done = PyObject_CallMethodNoArgs(monitor, s_start);
        truth = done == NULL ? -1 : 1;
        Py_XDECREF(done);
    }
    if (truth < 0) {
        return -1;
    }
    PyObject *queue = PyObject_GetAttr(target, s_queue);
    PyObject *responses = queue == NULL ? NULL : PyObject_GetAttr(target, s_sample_responses);
    PyObject *tap = NULL;
    if (responses != NULL) {
        PyObject *call[7] = {monitor, queue, responses, limit, args[0], args[1], args[2]};
        tap = PyObject_Vectorcall(tap_type, call, 7, NULL);
    }
    int read_responses = tap == NULL ? -1 : PyObject_IsTrue(responses);
    Py_XDECREF(queue);
    Py_XDECREF(responses);
    if (read_responses < 0) {
        Py_XDECREF(tap);
        return -1;
    }
    *receive = PyObject_GetAttr(tap, s_receive);
    /* Nothing to read in the response: the request is submitted once its body is
     * complete, and `send` goes untouched. */
    *send = read_responses ? PyObject_GetAttr(tap, s_send) : Py_NewRef(args[2]);
    Py_DECREF(tap);
    if (*receive == NULL || *send == NULL) {
        Py_CLEAR(*receive);
        Py_CLEAR(*send);
        return -1;
    }
    return 1;
}

/* The countdown ran out: what the middleware's `_sampled` does (the Python gate's
 * way), in C where the compiled tap was built. The app's coroutine for the request,
 * tapped unless the cap refuses it; a failure up to the tap is counted through the
 * monitor and the request passes untouched. */
static PyObject *
sampled(Gate *self, PyObject *target, PyObject *const *args)
{
    if (tap_type == NULL || self->max_body_bytes == NULL || self->app == NULL) {
        /* self._sampled(target, scope, receive, send) */
        PyObject *stack[5] = {(PyObject *)self, target, args[0], args[1], args[2]};
        return PyObject_VectorcallMethod(s_sampled, stack, 5, NULL);
    }
    PyObject *monitor = PyObject_GetAttr(target, s_monitor);
    if (monitor == NULL) {
        return NULL; /* the Python path's `except` needs it too, and raises */
    }
    /* Held from here: the Python code below (take, start) may replace or delete them. */
    PyObject *app = Py_NewRef(self->app), *limit = Py_NewRef(self->max_body_bytes);
    PyObject *receive = NULL, *send = NULL;
    int tap = tapped(target, monitor, limit, args, &receive, &send);
    Py_DECREF(limit);
    PyObject *result = NULL;
    /* A failure that is not an Exception is raised, as `except Exception` raises it. */
    if (tap >= 0 || count_exception(monitor, "worker") == 0) {
        PyObject *call[3] = {args[0], tap > 0 ? receive : args[1], tap > 0 ? send : args[2]};
        result = PyObject_Vectorcall(app, call, 3, NULL);
    }
    Py_DECREF(monitor);
    Py_DECREF(app);
    Py_XDECREF(receive);
    Py_XDECREF(send);
    return result;
}

/* Exactly a set or frozenset: a subclass may change `in` or truth, which the C API's
 * set functions would ignore. */
static int
exact_set(PyObject *o)
{
    return o != NULL && (PyFrozenSet_CheckExact(o) || PySet_CheckExact(o));
}

static PyObject *
gate_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Gate *self = (Gate *)callable;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL || self->app == NULL
        || !exact_set(self->methods) || self->routed == NULL || !PyDict_CheckExact(self->routed)
        || !exact_set(self->debug_paths) || PySet_GET_SIZE(self->debug_paths) != 0) {
        return slow(self, args, nargsf, kwnames);
    }
    PyObject *scope = args[0];
    if (!PyDict_CheckExact(scope)) {
        return slow(self, args, nargsf, kwnames);
    }
    /* The scope's values are exact str, so looking them up runs no Python code that
     * could free what we hold; the containers are held all the same. Lookups that find
     * nothing or meet a type not handled here go the Python way; an exception is
     * raised as the Python path would raise it. */
    PyObject *kind = PyDict_GetItemWithError(scope, s_type);
    if (kind == NULL || !PyUnicode_CheckExact(kind)
        || (kind != s_http && PyUnicode_Compare(kind, s_http) != 0)) {
        return PyErr_Occurred() ? NULL : slow(self, args, nargsf, kwnames);
    }
    PyObject *method = PyDict_GetItemWithError(scope, s_method);
    if (method == NULL || !PyUnicode_CheckExact(method)) {
        return PyErr_Occurred() ? NULL : slow(self, args, nargsf, kwnames);
    }
    PyObject *methods = Py_NewRef(self->methods);
    int watched = PySet_Contains(methods, method);
    Py_DECREF(methods);
    if (watched < 0) {
        return NULL;
    }
    if (watched) {
        PyObject *path = PyDict_GetItemWithError(scope, s_path);
        if (path == NULL || !PyUnicode_CheckExact(path)) {
            return PyErr_Occurred() ? NULL : slow(self, args, nargsf, kwnames);
        }
        Py_INCREF(path);
        PyObject *routed = Py_NewRef(self->routed);
        PyObject *target = PyDict_GetItemWithError(routed, path);
        Py_XINCREF(target);
        Py_DECREF(routed);
        Py_DECREF(path);
        if (target == NULL) {
            /* A path not seen yet: the Python path routes it and caches the target. */
            return PyErr_Occurred() ? NULL : slow(self, args, nargsf, kwnames);
        }
        if (target != Py_None) {
            int due = count_down(target);
            if (due < 0) {
                Py_DECREF(target);
                return due == -1 ? NULL : slow(self, args, nargsf, kwnames);
            }
            if (due) {
                PyObject *result = sampled(self, target, args);
                Py_DECREF(target);
                return result;
            }
        }
        Py_DECREF(target);
    }
    /* Held for the call: the app may replace `self.app` while it runs. */
    PyObject *app = Py_NewRef(self->app);
    PyObject *result = PyObject_Vectorcall(app, args, 3, NULL);
    Py_DECREF(app);
    return result;
}

static PyObject *
gate_call(PyObject *callable, PyObject *args, PyObject *kwargs)
{
    /* Python subclasses (SkewMiddleware) do not inherit vectorcall before 3.12. */
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyObject *method = PyObject_GetAttr(callable, s_dispatch);
        if (method == NULL) {
            return NULL;
        }
        PyObject *result = PyObject_Call(method, args, kwargs);
        Py_DECREF(method);
        return result;
    }
    return gate_vectorcall(callable, &PyTuple_GET_ITEM(args, 0), (size_t)nargs, NULL);
}

static int
gate_traverse(Gate *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->app);
    Py_VISIT(self->methods);
    Py_VISIT(self->routed);
    Py_VISIT(self->debug_paths);
    Py_VISIT(self->max_body_bytes);
    return 0;
}

static int
gate_clear(Gate *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->methods);
    Py_CLEAR(self->routed);
    Py_CLEAR(self->debug_paths);
    Py_CLEAR(self->max_body_bytes);
    return 0;
}

static void
gate_dealloc(Gate *self)
{
    PyObject_GC_UnTrack(self);
    gate_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
gate_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Gate *self = (Gate *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->vectorcall = gate_vectorcall;
    }
    return (PyObject *)self;
}

static PyMemberDef gate_members[] = {
    {"app", T_OBJECT_EX, offsetof(Gate, app), 0, "the wrapped ASGI app"},
    {"methods", T_OBJECT_EX, offsetof(Gate, methods), 0, "watched methods (frozenset)"},
    {"_routed", T_OBJECT_EX, offsetof(Gate, routed), 0, "path -> target cache (dict)"},
    {"debug_paths", T_OBJECT_EX, offsetof(Gate, debug_paths), 0, "the debug page's paths"},
    {"max_body_bytes", T_OBJECT_EX, offsetof(Gate, max_body_bytes), 0,
     "bodies over this many bytes are not kept"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Gate, vectorcall), READONLY},
    {NULL},
};

static PyType_Slot gate_slots[] = {
    {Py_tp_doc, "The compiled per-request gate of SkewMiddleware (see sidecar/gate.py)."},
    {Py_tp_new, gate_new},
    {Py_tp_call, gate_call},
    {Py_tp_traverse, gate_traverse},
    {Py_tp_clear, gate_clear},
    {Py_tp_dealloc, gate_dealloc},
    {Py_tp_members, gate_members},
    {0, NULL},
};

static PyType_Spec gate_spec = {
    .name = "sidecar._gate.Gate",
    .basicsize = sizeof(Gate),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = gate_slots,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sidecar._gate",
    .m_doc = "The middleware's per-request gate, compiled (see sidecar/gate.py).",
    .m_size = -1,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

/* `module.name` in *out (a new reference) where that compiled module was built, NULL
 * where it was not: 0. -1 with an exception set otherwise, an ImportError when the
 * module lacks the name (sidecar.compiled then falls back to Python). */
static int
compiled_attribute(const char *module, const char *name, PyObject **out)
{
    *out = NULL;
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ImportError)) {
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    *out = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    if (*out == NULL) {
        PyErr_Format(PyExc_ImportError, "%s has no %s", module, name);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC
PyInit__gate(void)
{
    if (intern(&s_type, "type") < 0 || intern(&s_http, "http") < 0
        || intern(&s_method, "method") < 0 || intern(&s_path, "path") < 0
        || intern(&s_sampler, "sampler") < 0 || intern(&s_countdown, "countdown") < 0
        || intern(&s_dispatch, "_dispatch") < 0 || intern(&s_sampled, "_sampled") < 0
        || intern(&s_monitor, "monitor") < 0 || intern(&s_queue, "queue") < 0
        || intern(&s_sample_responses, "sample_responses") < 0 || intern(&s_take, "take") < 0
        || intern(&s_started, "started") < 0 || intern(&s_start, "start") < 0
        || intern(&s_receive, "receive") < 0 || intern(&s_send, "send") < 0) {
        return NULL;
    }
    /* The compiled tap, where it was built (else sampled requests take `_sampled`). */
    if (compiled_attribute("sidecar._tap", "Tap", &tap_type) < 0) {
        return NULL;
    }
    /* The compiled sampler, where it was built (else samplers are counted down through
     * their attribute). */
    PyObject *core;
    if (compiled_attribute("sidecar._sampling", "SamplerCore", &core) < 0) {
        return NULL;
    }
    if (core != NULL) {
        if (!PyType_Check(core)) {
            Py_DECREF(core);
            PyErr_SetString(PyExc_ImportError, "sidecar._sampling.SamplerCore is not a type");
            return NULL; /* an ImportError: sidecar.compiled falls back to Python */
        }
        sampler_core = (PyTypeObject *)core;
        countdown_member = _PyType_Lookup(sampler_core, s_countdown);
        if (countdown_member == NULL) {
            Py_CLEAR(sampler_core);
            PyErr_SetString(PyExc_ImportError, "SamplerCore has no countdown");
            return NULL;
        }
        Py_INCREF(countdown_member);
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *type = PyType_FromSpec(&gate_spec);
    if (type == NULL || PyModule_AddObject(m, "Gate", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
