/* A sampled request's tap, compiled: what sidecar.middleware._Tap does, without a
 * Python frame per message.
 *
 * `Tap.receive()` returns an awaitable that calls the server's `receive()` when first
 * awaited, passes everything through (values it yields, values sent or thrown in,
 * close) and looks at the message it returns; once the request body is complete it
 * returns the server's own awaitable untouched. `Tap.send(message)` looks at the
 * message and returns the server's `send(message)`. When the exchange ends, the
 * sample (references to the body chunks and header lists) goes to the monitor's
 * `SampleQueue` (defined here too, so the tap reaches its counters without an
 * attribute lookup) or to `monitor.submit`, or a drop is counted, exactly as the
 * Python class does. A failure while looking is
 * counted through `monitor._error("worker")` and never reaches the app; what the
 * server's own receive or send raise reaches the app unchanged.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_counted.h"

#define FEW_CHUNKS 8 /* bodies of more chunks go to a list (appends stay linear) */

static PyObject *s_type, *s_body, *s_more_body, *s_status, *s_headers, *s_http_request,
    *s_http_disconnect, *s_response_body, *s_response_start, *s_response_headers,
    *s_submit, *s_counts, *s_dropped,
    *s_too_large, *s_body_incomplete, *s_empty_body, *s_get, *s_throw, *s_close,
    *s_queue_full, *s_monitor_disabled,
    *empty_bytes, *empty_tuple, *one;
static PyObject *sample_type; /* sidecar.worker.Sample, set by `use_sample` */
/* Where Sample's slots are, by `use_sample`: request, response, status, headers,
 * response_headers. (Its size stays with the queue.) */
#define SAMPLE_SLOTS 5
static const char *sample_slot_names[SAMPLE_SLOTS] = {
    "request", "response", "status", "headers", "response_headers"};
static Py_ssize_t sample_slots[SAMPLE_SLOTS];
static PyTypeObject *TapType, *ReceivingType;

/* -- the queue to the worker -------------------------------------------------------- */

/* sidecar.sample_queue.PythonSampleQueue, compiled: a ring of (sample, size) that
 * grows by doubling (up to `limit` entries in use), its counters in the struct. The
 * loop puts, the worker takes; both hold the GIL, so plain fields are enough. */
typedef struct {
    PyObject *sample;
    Py_ssize_t size;
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *ring;
    Py_ssize_t capacity, head, length;
    Py_ssize_t limit;        /* samples queued at most; 0 refuses all */
    long long max_bytes;     /* body bytes queued at most */
    long long bytes;         /* body bytes queued now */
    long long sampled;       /* samples ever queued */
    Py_ssize_t wake_samples; /* wake the worker once this many wait */
    PyObject *wake;          /* the worker's Event.set */
    char woken;              /* wake() called; the worker sets it back to False */
} SampleQueue;

static PyTypeObject *QueueType;

/* The i-th queued entry, oldest first. */
static inline Entry *
at(SampleQueue *q, Py_ssize_t i)
{
    return &q->ring[(q->head + i) % q->capacity];
}

/* Room for one more sample of `size` bytes. */
static int
admits(SampleQueue *q, Py_ssize_t size)
{
    return q->length < q->limit && (long long)size <= q->max_bytes - q->bytes;
}

/* Appends `sample` (a new reference is taken) once `admits` said yes; calls wake()
 * for a full batch. 0, or -1 with an exception set (the sample is queued even so, as
 * the Python queue has appended it before waking). */
static int
push(SampleQueue *q, PyObject *sample, Py_ssize_t size)
{
    if (q->length == q->capacity) {
        Py_ssize_t grown = q->capacity ? 2 * q->capacity : 64;
        Entry *ring = PyMem_New(Entry, grown);
        if (ring == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < q->length; i++) { /* unwrapped, oldest first */
            ring[i] = *at(q, i);
        }
        PyMem_Free(q->ring);
        q->ring = ring;
        q->capacity = grown;
        q->head = 0;
    }
    Entry *entry = at(q, q->length);
    entry->sample = Py_NewRef(sample);
    entry->size = size;
    q->length++;
    q->bytes += size;
    q->sampled++;
    /* Wake the worker only for a full batch: waking it per sample costs a thread
     * switch per request and leaves numpy with batches of one row. */
    if (q->length >= q->wake_samples && !q->woken && q->wake != NULL) {
        q->woken = 1;
        PyObject *done = PyObject_CallNoArgs(q->wake);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
    }
    return 0;
}

/* The oldest sample (a new reference), its bytes released; NULL when empty. */
static PyObject *
pop(SampleQueue *q)
{
    if (q->length == 0) {
        return NULL;
    }
    Entry entry = q->ring[q->head];
    q->head = (q->head + 1) % q->capacity;
    q->length--;
    q->bytes -= entry.size;
    return entry.sample;
}

static PyObject *
queue_popleft(SampleQueue *q, PyObject *unused)
{
    PyObject *sample = pop(q);
    if (sample == NULL) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty queue");
    }
    return sample;
}

/* Drops every queued sample (what their destructors put goes too). */
static void
drop_all(SampleQueue *q)
{
    PyObject *sample;
    while ((sample = pop(q)) != NULL) {
        Py_DECREF(sample);
    }
}

static PyObject *
queue_clear_method(SampleQueue *q, PyObject *unused)
{
    drop_all(q);
    Py_RETURN_NONE;
}

/* A Sample's slot (borrowed; NULL when unset), at the offsets `use_sample` found. */
#define SLOT(sample, i) (*(PyObject **)((char *)(sample) + sample_slots[i]))
enum { REQUEST, RESPONSE, STATUS, HEADERS, RESPONSE_HEADERS };

/* The one chunk of `chunks` (a tuple or list of one, as the tap keeps them), or NULL. */
static PyObject *
only_chunk(PyObject *chunks)
{
    if (PyTuple_CheckExact(chunks)) {
        return PyTuple_GET_SIZE(chunks) == 1 ? PyTuple_GET_ITEM(chunks, 0) : NULL;
    }
    if (PyList_CheckExact(chunks)) {
        return PyList_GET_SIZE(chunks) == 1 ? PyList_GET_ITEM(chunks, 0) : NULL;
    }
    return NULL;
}

/* 200 <= status < 300, as Python compares: 1, 0 or -1. */
static int
successful(PyObject *status)
{
    if (PyLong_CheckExact(status)) {
        int overflow;
        long code = PyLong_AsLongAndOverflow(status, &overflow);
        return overflow ? 0 : 200 <= code && code < 300;
    }
    PyObject *low = PyLong_FromLong(200), *high = PyLong_FromLong(300);
    int ok = low != NULL && high != NULL ? PyObject_RichCompareBool(status, low, Py_GE) : -1;
    if (ok == 1) {
        ok = PyObject_RichCompareBool(status, high, Py_LT);
    }
    Py_XDECREF(low);
    Py_XDECREF(high);
    return ok;
}

/* Sorts one sample into the lists of `queue_triage`; 0, or -1 with an exception set. */
static int
sort_sample(PyObject *sample, PyObject *identity, int responses, int outputs,
            PyObject **lists)
{
    enum { PLAIN, BODIES, OUTPUTS, OUTPUT_BODIES, OUTPUT_HEADERS, RESPONSES, SLOW };
    int set = Py_IS_TYPE(sample, (PyTypeObject *)sample_type);
    for (int i = REQUEST; set && i <= RESPONSE_HEADERS; i++) {
        set = SLOT(sample, i) != NULL;
    }
    PyObject *body = set ? only_chunk(SLOT(sample, REQUEST)) : NULL;
    int as_is = 0;
    if (body != NULL) {
        PyObject *said = PyObject_CallOneArg(identity, SLOT(sample, HEADERS));
        if (said == NULL) {
            return -1;
        }
        as_is = said == Py_True;
        Py_DECREF(said);
    }
    if (!as_is) { /* the Python path: several chunks, an encoding, odd headers */
        return PyList_Append(lists[SLOW], sample);
    }
    if (PyList_Append(lists[PLAIN], sample) < 0 || PyList_Append(lists[BODIES], body) < 0) {
        return -1;
    }
    if (!responses) {
        return 0;
    }
    PyObject *response = SLOT(sample, RESPONSE);
    int some = PyObject_IsTrue(response);
    int ok = some > 0 ? successful(SLOT(sample, STATUS)) : some;
    if (ok <= 0) {
        return ok;
    }
    PyObject *chunk = outputs ? only_chunk(response) : NULL;
    if (chunk == NULL) {
        return PyList_Append(lists[RESPONSES], sample);
    }
    return PyList_Append(lists[OUTPUTS], sample) < 0
                   || PyList_Append(lists[OUTPUT_BODIES], chunk) < 0
                   || PyList_Append(lists[OUTPUT_HEADERS], SLOT(sample, RESPONSE_HEADERS)) < 0
               ? -1
               : 0;
}

#define TRIAGE_LISTS 7

/* triage(n, identity, responses, outputs): the worker's loop over the next n samples
 * (Monitor._extract_batch), without a Python step per sample. Returns seven lists:
 * the plain samples (one request chunk sent as it is: `identity(headers)`) and their
 * bodies; of those, when `responses`, the successful ones with one response chunk
 * (when `outputs`), their bodies and header lists, and the other successful ones with
 * a response; and the samples for the Python path. */
static PyObject *
queue_triage(SampleQueue *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "triage(n, identity, responses, outputs)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    int responses = PyObject_IsTrue(args[2]), outputs = PyObject_IsTrue(args[3]);
    if ((n == -1 && PyErr_Occurred()) || responses < 0 || outputs < 0) {
        return NULL;
    }
    if (sample_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sidecar._tap: use_sample() was not called");
        return NULL;
    }
    PyObject *result = PyTuple_New(TRIAGE_LISTS);
    if (result == NULL) {
        return NULL;
    }
    PyObject *lists[TRIAGE_LISTS];
    for (int i = 0; i < TRIAGE_LISTS; i++) {
        lists[i] = PyList_New(0);
        if (lists[i] == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, lists[i]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sample = pop(q);
        if (sample == NULL) {
            break; /* fewer queued than asked (a test's clear) */
        }
        int failed = sort_sample(sample, args[1], responses, outputs, lists);
        Py_DECREF(sample);
        if (failed < 0) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}

/* sample.<name> = tuple(sample.<name>) */
static int
as_tuple(PyObject *sample, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(sample, name);
    if (value == NULL) {
        return -1;
    }
    Py_SETREF(value, PySequence_Tuple(value));
    if (value == NULL) {
        return -1;
    }
    int failed = PyObject_SetAttr(sample, name, value);
    Py_DECREF(value);
    return failed;
}

/* put(sample, size): as PythonSampleQueue.put (attributes set generically: this is
 * the Python tap's and the tests' way in; the compiled tap builds its samples ready). */
static PyObject *
queue_put(SampleQueue *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(sample, size): 2 arguments");
        return NULL;
    }
    PyObject *sample = args[0];
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "put(): a sample's size cannot be negative");
        return NULL;
    }
    if (!admits(q, size)) {
        Py_RETURN_FALSE;
    }
    int failed = as_tuple(sample, s_headers) < 0 || as_tuple(sample, s_response_headers) < 0
                 || push(q, sample, size) < 0;
    if (failed) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static Py_ssize_t
queue_length(SampleQueue *q)
{
    return q->length;
}

/* iter(queue): the samples queued now, oldest first (a snapshot). A list, appended to:
 * allocating a tuple of the length may collect garbage, whose finalizers may put. */
static PyObject *
queue_iter(SampleQueue *q)
{
    PyObject *samples = PyList_New(0);
    if (samples == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < q->length; i++) {
        if (PyList_Append(samples, at(q, i)->sample) < 0) {
            Py_DECREF(samples);
            return NULL;
        }
    }
    PyObject *it = PyObject_GetIter(samples);
    Py_DECREF(samples);
    return it;
}

/* SampleQueue(limit, max_bytes, wake_samples, wake) */
static PyObject *
queue_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"limit", "max_bytes", "wake_samples", "wake", NULL};
    Py_ssize_t limit, wake_samples;
    long long max_bytes;
    PyObject *wake;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nLnO:SampleQueue", names, &limit,
                                     &max_bytes, &wake_samples, &wake)) {
        return NULL;
    }
    SampleQueue *q = (SampleQueue *)type->tp_alloc(type, 0);
    if (q == NULL) {
        return NULL;
    }
    q->ring = NULL;
    q->capacity = q->head = q->length = 0;
    q->limit = limit;
    q->max_bytes = max_bytes;
    q->bytes = q->sampled = 0;
    q->wake_samples = wake_samples;
    q->wake = Py_NewRef(wake);
    q->woken = 0;
    return (PyObject *)q;
}

static int
queue_traverse(SampleQueue *q, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(q));
    Py_VISIT(q->wake);
    for (Py_ssize_t i = 0; i < q->length; i++) {
        Py_VISIT(at(q, i)->sample);
    }
    return 0;
}

static int
queue_clear(SampleQueue *q)
{
    Py_CLEAR(q->wake);
    drop_all(q);
    return 0;
}

static void
queue_dealloc(SampleQueue *q)
{
    PyObject_GC_UnTrack(q);
    queue_clear(q);
    PyMem_Free(q->ring);
    PyTypeObject *type = Py_TYPE(q);
    type->tp_free((PyObject *)q);
    Py_DECREF(type);
}

#define QUEUE_MEMBER(name, type, field, flags, doc)                                         \
    {name, type, offsetof(SampleQueue, field), flags, doc}

static PyMemberDef queue_members[] = {
    QUEUE_MEMBER("limit", T_PYSSIZET, limit, 0, "samples queued at most; 0 refuses all"),
    QUEUE_MEMBER("max_bytes", T_LONGLONG, max_bytes, READONLY, "body bytes queued at most"),
    QUEUE_MEMBER("sampled", T_LONGLONG, sampled, READONLY, "samples ever queued"),
    QUEUE_MEMBER("bytes", T_LONGLONG, bytes, READONLY, "body bytes the queued samples hold"),
    QUEUE_MEMBER("wake_samples", T_PYSSIZET, wake_samples, 0, "wake the worker at this many"),
    QUEUE_MEMBER("woken", T_BOOL, woken, 0, "wake() called; set back to False by the worker"),
    {NULL},
};

static PyMethodDef queue_methods[] = {
    {"put", (PyCFunction)(void (*)(void))queue_put, METH_FASTCALL,
     "Queue the sample (of `size` body bytes) unless the queue is full."},
    {"popleft", (PyCFunction)queue_popleft, METH_NOARGS, "The oldest sample."},
    {"triage", (PyCFunction)(void (*)(void))queue_triage, METH_FASTCALL,
     "The next n samples sorted for the worker (see Monitor._extract_batch)."},
    {"clear", (PyCFunction)queue_clear_method, METH_NOARGS, "Drop every queued sample."},
    {NULL},
};

static PyType_Slot queue_slots[] = {
    {Py_tp_doc, "The samples waiting for the worker (see sidecar.sample_queue)."},
    {Py_tp_new, queue_new},
    {Py_tp_methods, queue_methods},
    {Py_tp_members, queue_members},
    {Py_tp_iter, queue_iter},
    {Py_sq_length, queue_length},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_dealloc, queue_dealloc},
    {0, NULL},
};

static PyType_Spec queue_spec = {
    .name = "sidecar._tap.SampleQueue",
    .basicsize = sizeof(SampleQueue),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = queue_slots,
};


typedef struct {
    PyObject_HEAD
    PyObject *monitor;
    SampleQueue *queue; /* the monitor's compiled queue, or NULL: monitor.submit */
    PyObject *receive; /* the server's */
    PyObject *send;    /* the server's */
    PyObject *headers; /* scope["headers"] */
    PyObject *request; /* body chunks: a tuple while few, then a list */
    PyObject *response;
    PyObject *response_headers;
    PyObject *status;
    Py_ssize_t limit, request_size, response_size;
    char responses, request_done, overflow, finished;
} Tap;

/* The awaitable `Tap.receive()` returns while the request body is incomplete. */
typedef struct {
    PyObject_HEAD
    Tap *tap;
    PyObject *iter; /* the server's receive() as an iterator; NULL until first awaited */
    int done;       /* returned, raised, closed: awaiting again raises, as a coroutine */
} Receiving;

/* -- counting failures ----------------------------------------------------------- */

/* The exception set now, counted through the monitor (see _counted.h) and cleared. */
static int
counted(Tap *self)
{
    return count_exception(self->monitor, "worker");
}

/* -- looking at messages ---------------------------------------------------------- */

/* message[key] (fallback NULL) or message.get(key, fallback): a new reference, or
 * NULL with an exception set. */
static PyObject *
lookup(PyObject *message, PyObject *key, PyObject *fallback)
{
    if (PyDict_CheckExact(message)) {
        PyObject *value = PyDict_GetItemWithError(message, key);
        if (value != NULL) {
            return Py_NewRef(value);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
        if (fallback != NULL) {
            return Py_NewRef(fallback);
        }
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    if (fallback == NULL) {
        return PyObject_GetItem(message, key);
    }
    PyObject *args[3] = {message, key, fallback};
    return PyObject_VectorcallMethod(s_get, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* `kind == name`, as Python compares (the same interned string, usually). */
static int
is(PyObject *kind, PyObject *name)
{
    return kind == name ? 1 : PyObject_RichCompareBool(kind, name, Py_EQ);
}

/* `chunks` with `body` after them: a new tuple while few, else a list (appended to). */
static int
keep(PyObject **chunks, PyObject *body)
{
    PyObject *old = *chunks;
    if (PyTuple_CheckExact(old)) {
        Py_ssize_t n = PyTuple_GET_SIZE(old);
        PyObject *grown = n < FEW_CHUNKS ? PyTuple_New(n + 1) : PyList_New(n + 1);
        if (grown == NULL) {
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = Py_NewRef(PyTuple_GET_ITEM(old, i));
            if (n < FEW_CHUNKS) {
                PyTuple_SET_ITEM(grown, i, item);
            }
            else {
                PyList_SET_ITEM(grown, i, item);
            }
        }
        if (n < FEW_CHUNKS) {
            PyTuple_SET_ITEM(grown, n, Py_NewRef(body));
        }
        else {
            PyList_SET_ITEM(grown, n, Py_NewRef(body));
        }
        *chunks = grown;
        Py_DECREF(old);
        return 0;
    }
    return PyList_Append(old, body);
}

/* Adds the body (message.get("body", b"")) to `chunks` within the limit; returns
 * 1 when it kept it, 0 when the body was empty or over the limit, -1 on error. */
static int
take_body(Tap *self, PyObject *message, PyObject **chunks, Py_ssize_t *size, char *over)
{
    PyObject *body = lookup(message, s_body, empty_bytes);
    if (body == NULL) {
        return -1;
    }
    int kept = 0;
    int full = PyObject_IsTrue(body);
    if (full > 0) {
        Py_ssize_t n = PyObject_Size(body);
        if (n < 0) {
            Py_DECREF(body);
            return -1;
        }
        *size += n;
        if (*size <= self->limit) {
            kept = keep(chunks, body) < 0 ? -1 : 1;
        }
        else if (over != NULL) {
            *over = 1;
        }
    }
    Py_DECREF(body);
    return full < 0 ? -1 : kept;
}

/* message.get("more_body", False), as a truth value (-1 on error). */
static int
more_body(PyObject *message)
{
    PyObject *more = lookup(message, s_more_body, Py_False);
    if (more == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(more);
    Py_DECREF(more);
    return truth;
}

static int
bump(Tap *self, PyObject *reason)
{
    PyObject *counts = PyObject_GetAttr(self->monitor, s_counts);
    if (counts == NULL) {
        return -1;
    }
    PyObject *dropped = PyObject_GetAttr(counts, s_dropped);
    Py_DECREF(counts);
    if (dropped == NULL) {
        return -1;
    }
    int failed = -1;
    PyObject *before = PyObject_GetItem(dropped, reason);
    if (before == NULL && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
        before = PyLong_FromLong(0);
    }
    if (before != NULL) {
        PyObject *after = PyNumber_Add(before, one);
        if (after != NULL) {
            failed = PyObject_SetItem(dropped, reason, after);
            Py_DECREF(after);
        }
        Py_DECREF(before);
    }
    Py_DECREF(dropped);
    return failed;
}

/* A Sample of the exchange, its slots written at their offsets (a generic attribute
 * set costs about 200 instructions, five of them a sample). `queued`: for the compiled
 * queue, with the header lists as tuples (see PythonSampleQueue.put for why). */
static PyObject *
new_sample(Tap *self, PyObject *response, int queued)
{
    PyTypeObject *type = (PyTypeObject *)sample_type;
    PyObject *sample = type->tp_alloc(type, 0);
    if (sample == NULL) {
        return NULL;
    }
    PyObject *headers = queued ? PySequence_Tuple(self->headers) : Py_NewRef(self->headers);
    PyObject *response_headers = queued ? PySequence_Tuple(self->response_headers)
                                        : Py_NewRef(self->response_headers);
    PyObject *values[SAMPLE_SLOTS] = {Py_XNewRef(self->request), Py_NewRef(response),
                                      Py_XNewRef(self->status), headers, response_headers};
    int failed = 0;
    for (int i = 0; i < SAMPLE_SLOTS; i++) {
        failed |= values[i] == NULL;
        SLOT(sample, i) = values[i]; /* NULL: unset */
    }
    if (failed) {
        Py_DECREF(sample);
        return NULL;
    }
    return sample;
}

/* The exchange ended: queue the sample or count why not (once). */
static int
finish(Tap *self)
{
    if (self->finished) {
        return 0; /* a disconnect finished it before the response did */
    }
    self->finished = 1;
    if (self->overflow) {
        return bump(self, s_too_large);
    }
    if (!self->request_done) {
        return bump(self, s_body_incomplete); /* the app did not read it all */
    }
    if (PyObject_Length(self->request) == 0) {
        return bump(self, s_empty_body);
    }
    if (sample_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sidecar._tap: use_sample() was not called");
        return -1;
    }
    /* A response over the size limit is left out; the request is still checked. */
    int too_big = self->response_size > self->limit;
    PyObject *response = too_big ? empty_tuple : self->response;
    Py_ssize_t size = self->request_size + (too_big ? 0 : self->response_size);
    SampleQueue *queue = self->queue;
    if (queue != NULL && !admits(queue, size)) {
        return bump(self, queue->limit == 0 ? s_monitor_disabled : s_queue_full);
    }
    PyObject *sample = new_sample(self, response, queue != NULL);
    if (sample == NULL) {
        return -1;
    }
    int failed;
    if (queue != NULL) {
        failed = push(queue, sample, size);
    }
    else {
        PyObject *bytes = PyLong_FromSsize_t(size);
        PyObject *done = NULL;
        if (bytes != NULL) {
            PyObject *args[3] = {self->monitor, sample, bytes};
            done = PyObject_VectorcallMethod(s_submit, args, 3, NULL);
            Py_DECREF(bytes);
        }
        Py_XDECREF(done);
        failed = done == NULL ? -1 : 0;
    }
    Py_DECREF(sample);
    return failed;
}

/* A message the server's receive returned (while the request body is incomplete). */
static int
saw_request_message(Tap *self, PyObject *message)
{
    if (self->request_done) {
        return 0;
    }
    PyObject *kind = lookup(message, s_type, NULL);
    if (kind == NULL) {
        return -1;
    }
    int failed = 0;
    int request = is(kind, s_http_request);
    if (request > 0) {
        int more;
        if (take_body(self, message, &self->request, &self->request_size, &self->overflow) < 0
            || (more = more_body(message)) < 0) {
            failed = -1;
        }
        else {
            if (!more) {
                self->request_done = 1;
                if (!self->responses) {
                    failed = finish(self);
                }
            }
        }
    }
    else if (request == 0) {
        int disconnect = is(kind, s_http_disconnect);
        if (disconnect > 0) {
            failed = finish(self); /* the client left mid-body: counted once, nothing queued */
        }
        else if (disconnect < 0) {
            failed = -1;
        }
    }
    else {
        failed = -1;
    }
    Py_DECREF(kind);
    return failed;
}

static int
saw_response_message(Tap *self, PyObject *message)
{
    PyObject *kind = lookup(message, s_type, NULL);
    if (kind == NULL) {
        return -1;
    }
    int failed = 0;
    int body = is(kind, s_response_body);
    if (body > 0) {
        int more; /* a response over the limit is left out when the sample is made */
        if (take_body(self, message, &self->response, &self->response_size, NULL) < 0
            || (more = more_body(message)) < 0) {
            failed = -1;
        }
        else if (!more) {
            failed = finish(self);
        }
    }
    else if (body == 0) {
        int start = is(kind, s_response_start);
        if (start > 0) {
            PyObject *status = lookup(message, s_status, NULL);
            if (status == NULL) {
                failed = -1;
            }
            else {
                Py_SETREF(self->status, status);
                PyObject *headers = lookup(message, s_headers, empty_tuple);
                if (headers == NULL) {
                    failed = -1;
                }
                else {
                    Py_SETREF(self->response_headers, headers);
                }
            }
        }
        else if (start < 0) {
            failed = -1;
        }
    }
    else {
        failed = -1;
    }
    Py_DECREF(kind);
    return failed;
}

/* -- Receiving: the awaitable of Tap.receive() -------------------------------------- */

/* A generator made by @types.coroutine (CO_ITERABLE_COROUTINE): await takes it as is. */
static int
iterable_coroutine(PyObject *o)
{
    if (!PyGen_CheckExact(o)) {
        return 0;
    }
    PyObject *code = PyObject_GetAttrString(o, "gi_code");
    if (code == NULL) {
        PyErr_Clear();
        return 0;
    }
    int flagged = PyCode_Check(code) && (((PyCodeObject *)code)->co_flags & CO_ITERABLE_COROUTINE);
    Py_DECREF(code);
    return flagged;
}

/* What `await` does to get an iterator: a coroutine (or an iterable coroutine) is its
 * own, else __await__(). */
static PyObject *
awaited(PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable) || iterable_coroutine(awaitable)) {
        return Py_NewRef(awaitable);
    }
    PyAsyncMethods *methods = Py_TYPE(awaitable)->tp_as_async;
    if (methods == NULL || methods->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(awaitable)->tp_name);
        return NULL;
    }
    PyObject *iter = methods->am_await(awaitable);
    if (iter != NULL
        && (!PyIter_Check(iter) || PyCoro_CheckExact(iter) || iterable_coroutine(iter))) {
        PyErr_Format(PyExc_TypeError, "__await__() returned %s",
                     PyIter_Check(iter) ? "a coroutine" : "non-iterator");
        Py_CLEAR(iter);
    }
    return iter;
}

/* Awaited once only, as a coroutine: 0, or -1 with RuntimeError set. */
static int
fresh(Receiving *self)
{
    if (self->done) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return -1;
    }
    return 0;
}

static int
start(Receiving *self)
{
    if (self->iter != NULL) {
        return 0;
    }
    PyObject *awaitable = PyObject_CallNoArgs(self->tap->receive);
    if (awaitable == NULL) {
        return -1;
    }
    self->iter = awaited(awaitable);
    Py_DECREF(awaitable);
    return self->iter == NULL ? -1 : 0;
}

/* The server's receive finished with `message`: look at it (never raising). */
static int
returned(Receiving *self, PyObject *message)
{
    if (saw_request_message(self->tap, message) < 0) {
        return counted(self->tap);
    }
    return 0;
}

static PySendResult
receiving_am_send(Receiving *self, PyObject *arg, PyObject **result)
{
    if (fresh(self) < 0 || start(self) < 0) {
        self->done = 1;
        *result = NULL;
        return PYGEN_ERROR;
    }
    PySendResult status = PyIter_Send(self->iter, arg, result);
    if (status != PYGEN_NEXT) {
        self->done = 1;
    }
    if (status == PYGEN_RETURN && returned(self, *result) < 0) {
        Py_CLEAR(*result);
        return PYGEN_ERROR;
    }
    return status;
}

/* `status` and `result` of a send as an iterator's or generator's return. */
static PyObject *
as_iteration(PySendResult status, PyObject *result)
{
    if (status != PYGEN_RETURN) {
        return result; /* a yielded value, or NULL with an exception set */
    }
    if (result == Py_None) {
        Py_DECREF(result);
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    /* An instance, so a tuple or an exception is the value, not the arguments. */
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
    Py_DECREF(result);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *
receiving_iternext(Receiving *self)
{
    PyObject *result;
    PySendResult status = receiving_am_send(self, Py_None, &result);
    return as_iteration(status, result);
}

static PyObject *
receiving_send(Receiving *self, PyObject *value)
{
    PyObject *result;
    PySendResult status = receiving_am_send(self, value, &result);
    return as_iteration(status, result);
}

/* The value of the StopIteration set now (cleared), or NULL with it left set when the
 * exception is another. */
static PyObject *
stop_value(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        return NULL;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    PyObject *result = value == NULL ? NULL : PyObject_GetAttrString(value, "value");
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return result;
}

/* Raise what throw(...) was given, as an await of an iterator without throw() does. */
static PyObject *
raise_thrown(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *first = args[0];
    PyObject *value = nargs > 1 ? args[1] : Py_None;
    PyObject *traceback = nargs > 2 ? args[2] : Py_None;
    if (traceback != Py_None && !PyTraceBack_Check(traceback)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (PyExceptionInstance_Check(first)) {
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate value");
            return NULL;
        }
        PyErr_SetObject(PyExceptionInstance_Class(first), first);
    }
    else if (PyExceptionClass_Check(first)) {
        PyErr_SetObject(first, value == Py_None ? NULL : value);
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes or instances deriving from BaseException");
        return NULL;
    }
    if (traceback != Py_None) {
        PyObject *type, *exception, *tb;
        PyErr_Fetch(&type, &exception, &tb);
        PyErr_NormalizeException(&type, &exception, &tb);
        if (exception != NULL) {
            PyException_SetTraceback(exception, traceback);
        }
        Py_XDECREF(tb);
        PyErr_Restore(type, exception, Py_NewRef(traceback));
    }
    return NULL;
}

static PyObject *
receiving_throw(Receiving *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    if (fresh(self) < 0) {
        return NULL;
    }
    if (self->iter == NULL) {
        /* Never started: the server's receive is not called, as for a coroutine thrown
         * into before its first step. */
        self->done = 1;
        return raise_thrown(args, nargs);
    }
    PyObject *throw = PyObject_GetAttr(self->iter, s_throw);
    if (throw == NULL) {
        self->done = 1;
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        return raise_thrown(args, nargs);
    }
    PyObject *yielded = PyObject_Vectorcall(throw, args, nargs, NULL);
    Py_DECREF(throw);
    if (yielded != NULL) {
        return yielded;
    }
    self->done = 1;
    PyObject *message = stop_value();
    if (message == NULL) {
        return NULL; /* what the server raised (or the thrown exception), unchanged */
    }
    if (returned(self, message) < 0) {
        Py_DECREF(message);
        return NULL;
    }
    return as_iteration(PYGEN_RETURN, message);
}

static PyObject *
receiving_close(Receiving *self, PyObject *unused)
{
    self->done = 1;
    if (self->iter == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *close = PyObject_GetAttr(self->iter, s_close);
    if (close == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *done = PyObject_CallNoArgs(close);
    Py_DECREF(close);
    return done;
}

static PyObject *
receiving_await(PyObject *self)
{
    return Py_NewRef(self);
}

static int
receiving_traverse(Receiving *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->tap);
    Py_VISIT(self->iter);
    return 0;
}

static int
receiving_clear(Receiving *self)
{
    Py_CLEAR(self->tap);
    Py_CLEAR(self->iter);
    return 0;
}

static void
receiving_dealloc(Receiving *self)
{
    PyObject_GC_UnTrack(self);
    receiving_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMethodDef receiving_methods[] = {
    {"send", (PyCFunction)receiving_send, METH_O, "Send a value into the server's receive."},
    {"throw", (PyCFunction)(void (*)(void))receiving_throw, METH_FASTCALL,
     "Raise an exception in the server's receive."},
    {"close", (PyCFunction)receiving_close, METH_NOARGS, "Close the server's receive."},
    {NULL},
};

static PyType_Slot receiving_slots[] = {
    {Py_tp_doc, "The awaitable of Tap.receive(): the server's receive, looked at."},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, receiving_iternext},
    {Py_am_await, receiving_await},
    {Py_am_send, receiving_am_send},
    {Py_tp_methods, receiving_methods},
    {Py_tp_traverse, receiving_traverse},
    {Py_tp_clear, receiving_clear},
    {Py_tp_dealloc, receiving_dealloc},
    {0, NULL},
};

static PyType_Spec receiving_spec = {
    .name = "sidecar._tap.Receiving",
    .basicsize = sizeof(Receiving),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = receiving_slots,
};

/* -- Tap ---------------------------------------------------------------------------- */

static PyObject *
tap_receive(Tap *self, PyObject *unused)
{
    /* The server's receive is called when this is first awaited, not now: as a
     * coroutine would (a server's plain function may raise, and must raise there). */
    Receiving *receiving = PyObject_GC_New(Receiving, ReceivingType);
    if (receiving == NULL) {
        return NULL;
    }
    receiving->tap = (Tap *)Py_NewRef(self);
    receiving->iter = NULL;
    receiving->done = 0;
    PyObject_GC_Track(receiving);
    return (PyObject *)receiving;
}

static PyObject *
tap_send(Tap *self, PyObject *message)
{
    if (saw_response_message(self, message) < 0 && counted(self) < 0) {
        return NULL;
    }
    return PyObject_CallOneArg(self->send, message);
}

/* The body size limit as a Py_ssize_t that compares with sizes (never negative) as
 * the number itself does: beyond the range clamped, a float floored, NaN below all. */
static int
as_limit(PyObject *o, Py_ssize_t *limit)
{
    if (PyFloat_Check(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        if (isnan(d) || d < 0) {
            *limit = -1;
        }
        else if (d >= (double)PY_SSIZE_T_MAX) {
            *limit = PY_SSIZE_T_MAX;
        }
        else {
            *limit = (Py_ssize_t)d;
        }
        return 0;
    }
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow || value > PY_SSIZE_T_MAX || value < -1) {
        *limit = overflow < 0 || value < -1 ? -1 : PY_SSIZE_T_MAX;
    }
    else {
        *limit = (Py_ssize_t)value;
    }
    return 0;
}

/* Tap(monitor, queue, responses, limit, scope, receive, send): `queue` the monitor's
 * SampleQueue, which the finished sample goes to directly, or None: monitor.submit. */
static PyObject *
tap_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 7 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "Tap(monitor, queue, responses, limit, scope, receive, send): 7 "
                        "positional arguments");
        return NULL;
    }
    PyObject *queue = args[1];
    if (queue != Py_None && !Py_IS_TYPE(queue, QueueType)) {
        PyErr_Format(PyExc_TypeError, "Tap(): queue must be a SampleQueue or None, not %.200s",
                     Py_TYPE(queue)->tp_name);
        return NULL;
    }
    int responses = PyObject_IsTrue(args[2]);
    Py_ssize_t limit;
    if (responses < 0 || as_limit(args[3], &limit) < 0) {
        return NULL;
    }
    PyObject *headers = lookup(args[4], s_headers, NULL);
    if (headers == NULL) {
        return NULL;
    }
    Tap *self = PyObject_GC_New(Tap, (PyTypeObject *)type);
    if (self == NULL) {
        Py_DECREF(headers);
        return NULL;
    }
    self->monitor = Py_NewRef(args[0]);
    self->queue = queue == Py_None ? NULL : (SampleQueue *)Py_NewRef(queue);
    self->receive = Py_NewRef(args[5]);
    self->send = Py_NewRef(args[6]);
    self->headers = headers; /* read in the worker (Content-Encoding) */
    self->request = Py_NewRef(empty_tuple);
    self->response = Py_NewRef(empty_tuple);
    self->response_headers = Py_NewRef(empty_tuple);
    self->status = PyLong_FromLong(0);
    self->limit = limit;
    self->request_size = self->response_size = 0;
    self->responses = (char)responses;
    self->request_done = self->overflow = self->finished = 0;
    PyObject_GC_Track(self);
    if (self->status == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
tap_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Tap() takes no keyword arguments");
        return NULL;
    }
    return tap_vectorcall((PyObject *)type, &PyTuple_GET_ITEM(args, 0),
                          (size_t)PyTuple_GET_SIZE(args), NULL);
}

static int
tap_traverse(Tap *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->monitor);
    Py_VISIT(self->queue);
    Py_VISIT(self->receive);
    Py_VISIT(self->send);
    Py_VISIT(self->headers);
    Py_VISIT(self->request);
    Py_VISIT(self->response);
    Py_VISIT(self->response_headers);
    Py_VISIT(self->status);
    return 0;
}

static int
tap_clear(Tap *self)
{
    Py_CLEAR(self->monitor);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->receive);
    Py_CLEAR(self->send);
    Py_CLEAR(self->headers);
    Py_CLEAR(self->request);
    Py_CLEAR(self->response);
    Py_CLEAR(self->response_headers);
    Py_CLEAR(self->status);
    return 0;
}

static void
tap_dealloc(Tap *self)
{
    PyObject_GC_UnTrack(self);
    tap_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMethodDef tap_methods[] = {
    {"receive", (PyCFunction)tap_receive, METH_NOARGS, "The server's receive, looked at."},
    {"send", (PyCFunction)tap_send, METH_O, "Look at the message; the server's send(message)."},
    {NULL},
};

static PyType_Slot tap_slots[] = {
    {Py_tp_doc, "A sampled request's tap, compiled (see sidecar.middleware._Tap)."},
    {Py_tp_new, tap_new},
    {Py_tp_methods, tap_methods},
    {Py_tp_traverse, tap_traverse},
    {Py_tp_clear, tap_clear},
    {Py_tp_dealloc, tap_dealloc},
    {0, NULL},
};

static PyType_Spec tap_spec = {
    .name = "sidecar._tap.Tap",
    .basicsize = sizeof(Tap),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = tap_slots,
};

/* -- the module ------------------------------------------------------------------- */

static PyObject *
use_sample(PyObject *module, PyObject *type)
{
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "use_sample() takes the Sample class");
        return NULL;
    }
    Py_ssize_t slots[SAMPLE_SLOTS];
    for (int i = 0; i < SAMPLE_SLOTS; i++) {
        PyObject *descriptor = PyObject_GetAttrString(type, sample_slot_names[i]);
        if (descriptor == NULL) {
            return NULL;
        }
        int slot = Py_IS_TYPE(descriptor, &PyMemberDescr_Type)
                   && ((PyMemberDescrObject *)descriptor)->d_member->type == T_OBJECT_EX;
        if (slot) {
            slots[i] = ((PyMemberDescrObject *)descriptor)->d_member->offset;
        }
        Py_DECREF(descriptor);
        if (!slot) {
            PyErr_Format(PyExc_TypeError, "use_sample(): %s is not a slot of %R",
                         sample_slot_names[i], type);
            return NULL;
        }
    }
    memcpy(sample_slots, slots, sizeof(slots));
    Py_XSETREF(sample_type, Py_NewRef(type));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"use_sample", use_sample, METH_O,
     "The class of the samples Tap submits (sidecar.worker.Sample)."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sidecar._tap",
    .m_doc = "A sampled request's tap, compiled (see sidecar.middleware._Tap).",
    .m_size = -1,
    .m_methods = module_methods,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__tap(void)
{
    if (intern(&s_type, "type") < 0 || intern(&s_body, "body") < 0
        || intern(&s_more_body, "more_body") < 0 || intern(&s_status, "status") < 0
        || intern(&s_headers, "headers") < 0 || intern(&s_http_request, "http.request") < 0
        || intern(&s_http_disconnect, "http.disconnect") < 0
        || intern(&s_response_body, "http.response.body") < 0
        || intern(&s_response_start, "http.response.start") < 0
        || intern(&s_response_headers, "response_headers") < 0
        || intern(&s_submit, "submit") < 0 || intern(&s_counts, "counts") < 0
        || intern(&s_dropped, "dropped") < 0 || intern(&s_too_large, "too_large") < 0
        || intern(&s_body_incomplete, "body_incomplete") < 0
        || intern(&s_empty_body, "empty_body") < 0 || intern(&s_get, "get") < 0
        || intern(&s_throw, "throw") < 0 || intern(&s_close, "close") < 0
        || intern(&s_queue_full, "queue_full") < 0
        || intern(&s_monitor_disabled, "monitor_disabled") < 0) {
        return NULL;
    }
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    empty_tuple = PyTuple_New(0);
    one = PyLong_FromLong(1);
    if (empty_bytes == NULL || empty_tuple == NULL || one == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    ReceivingType = (PyTypeObject *)PyType_FromSpec(&receiving_spec);
    TapType = (PyTypeObject *)PyType_FromSpec(&tap_spec);
    QueueType = (PyTypeObject *)PyType_FromSpec(&queue_spec);
    if (ReceivingType == NULL || TapType == NULL || QueueType == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    TapType->tp_vectorcall = tap_vectorcall;
    if (PyModule_AddObject(m, "Tap", Py_NewRef(TapType)) < 0) {
        Py_DECREF(TapType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObject(m, "SampleQueue", Py_NewRef(QueueType)) < 0) {
        Py_DECREF(QueueType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
