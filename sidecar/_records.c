/* Flat JSON records read straight into columns, compiled.
 *
 * The worker's usual sample is one JSON object holding every feature once: numbers for
 * numeric features, strings for categorical ones (or a list of such objects, bare or as
 * `{"instances": [...]}`: one row each). Parsing it into a dict, then
 * gathering each feature's values back out of the dicts and into numpy arrays, was
 * most of the worker's CPU per sample. `Layout.read` scans the bytes once and writes
 * each number into its column of a float64 matrix and each category's vocabulary slot
 * into an int64 matrix, which the engine's numpy checks take as they are.
 *
 * It reads only what it fully understands: a body that is anything else (another
 * payload format, a missing, repeated or unknown key, null, a value of another type,
 * an escape in a string, NaN or an overflowing number, invalid JSON of any kind) is
 * left to the Python path, which parses it with its fallbacks and counts it as it
 * always has. So this never decides anything the Python path would decide otherwise;
 * it only does the usual case without building Python objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A set of byte strings, each with a value: feature names, or a feature's vocabulary.
 * Open addressing; the strings themselves are owned by the Layout (`keep`). */
typedef struct {
    Py_ssize_t count;
    Py_ssize_t capacity;
    const char **text;
    Py_ssize_t *length;
    int64_t *value;
    Py_ssize_t *table; /* 1 + index into the arrays above, 0 empty */
    size_t mask;
} Words;

static uint64_t
hash_bytes(const unsigned char *p, Py_ssize_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211ULL;
    }
    return h;
}

static int
words_init(Words *w, Py_ssize_t capacity)
{
    size_t size = 8;
    while (size < (size_t)capacity * 2) {
        size *= 2;
    }
    w->mask = size - 1;
    w->capacity = capacity;
    w->text = PyMem_Calloc(capacity + 1, sizeof(char *));
    w->length = PyMem_Calloc(capacity + 1, sizeof(Py_ssize_t));
    w->value = PyMem_Calloc(capacity + 1, sizeof(int64_t));
    w->table = PyMem_Calloc(size, sizeof(Py_ssize_t));
    if (w->text == NULL || w->length == NULL || w->value == NULL || w->table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
words_free(Words *w)
{
    PyMem_Free(w->text);
    PyMem_Free(w->length);
    PyMem_Free(w->value);
    PyMem_Free(w->table);
    memset(w, 0, sizeof(Words));
}

/* The index of `text`, or -1. */
static Py_ssize_t
words_find(const Words *w, const unsigned char *text, Py_ssize_t n)
{
    for (size_t i = hash_bytes(text, n) & w->mask;; i = (i + 1) & w->mask) {
        Py_ssize_t j = w->table[i] - 1;
        if (j < 0) {
            return -1;
        }
        if (w->length[j] == n && memcmp(w->text[j], text, n) == 0) {
            return j;
        }
    }
}

/* Add a string: 0, 1 if it was there, -1 (raised) beyond the capacity words_init
 * was given (the table must keep empty slots for words_find to end). */
static int
words_add(Words *w, const char *text, Py_ssize_t n, int64_t value)
{
    if (words_find(w, (const unsigned char *)text, n) >= 0) {
        return 1;
    }
    if (w->count >= w->capacity) {
        PyErr_SetString(PyExc_RuntimeError, "Layout: a vocabulary changed while read");
        return -1;
    }
    Py_ssize_t j = w->count++;
    w->text[j] = text;
    w->length[j] = n;
    w->value[j] = value;
    size_t i = hash_bytes((const unsigned char *)text, n) & w->mask;
    while (w->table[i] != 0) {
        i = (i + 1) & w->mask;
    }
    w->table[i] = j + 1;
    return 0;
}

typedef struct Deferred Deferred; /* below: numbers read once the GIL is back */

typedef struct {
    PyObject_HEAD
    Words features;      /* value: >= 0 a numeric column, < 0 -(1 + categorical column) */
    Py_ssize_t numbers;  /* numeric features (columns of the float matrix) */
    Py_ssize_t categories;
    Words *vocabulary;   /* per categorical column: its strings' slots */
    int64_t *unseen;     /* per categorical column: the slot of values not in it */
    PyObject *keep;      /* list of the UTF-8 bytes the Words point into */
    uint64_t *stamp;     /* per feature: the record it was last seen in (repeats) */
    unsigned char *plain; /* per feature: its name has no quote, backslash or control byte */
    uint64_t record;
    int ready;           /* __init__ completed */
    int reading;         /* a read runs with the GIL released: the state above is its */
    Deferred *deferred;  /* while the GIL is released: numbers for CPython's strtod */
} Layout;

static Py_ssize_t
find(Layout *self, const unsigned char *key, Py_ssize_t n, Py_ssize_t guess)
{
    /* The feature named `key`, or -1. Bodies usually list keys in the same order, so
     * the feature after the previous key is tried first. */
    const Words *w = &self->features;
    if (guess < w->count && w->length[guess] == n && memcmp(w->text[guess], key, n) == 0) {
        return guess;
    }
    return words_find(w, key, n);
}

static inline const unsigned char *
skip_space(const unsigned char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') {
        p++;
    }
    return p;
}

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static const double POWERS[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Numbers past the fast path, read while the GIL is released: CPython's strtod needs
 * it, so each is noted (its token and where its value goes) and converted once the GIL
 * is back. Only numbers whose value is surely finite are deferred; any other (a huge
 * exponent, no memory for the note) sets `wants_gil`, and its body is read again with
 * the GIL held. */
typedef struct {
    const char *start, *end; /* the token */
    double *into;
} Note;

struct Deferred {
    Note *notes; /* the raw allocator's: growable without the GIL */
    Py_ssize_t count;
    Py_ssize_t capacity;
    int wants_gil;
};

static int
defer(Deferred *d, const unsigned char *start, const unsigned char *end, double *into)
{
    if (d->count == d->capacity) {
        Py_ssize_t capacity = d->capacity ? 2 * d->capacity : 64;
        Note *notes = PyMem_RawRealloc(d->notes, capacity * sizeof(Note));
        if (notes == NULL) {
            return 0;
        }
        d->notes = notes;
        d->capacity = capacity;
    }
    d->notes[d->count++] = (Note){(const char *)start, (const char *)end, into};
    return 1;
}

/* A JSON number at p (RFC 8259's grammar exactly), or NULL. *value is the correctly
 * rounded double: in one IEEE operation when it has at most 15 digits and the power of
 * ten is an exact double (Clinger's fast path), else by CPython's own strtod, at once
 * (`deferred` NULL: the GIL is held) or once the GIL is back (noted in `deferred`, and
 * *value 0 meanwhile). The digits are gathered in the same pass that checks the
 * grammar. Always inlined: the call cost about 20 instructions a value, some 500 of
 * the 8,400 that reading a 32-feature record takes. */
static ALWAYS_INLINE const unsigned char *
read_number(const unsigned char *p, double *value, Deferred *deferred)
{
    const unsigned char *start = p;
    int negative = *p == '-';
    p += negative;
    const unsigned char *whole = p;
    /* The digits as one integer, gathered while the grammar is checked: it wraps past
     * 19 digits, and is used only for 15 or fewer. */
    uint64_t digits = 0;
    if (*p == '0') {
        p++;
    }
    else if (*p >= '1' && *p <= '9') {
        do {
            digits = digits * 10 + (uint64_t)(*p++ - '0');
        } while (is_digit(*p));
    }
    else {
        return NULL;
    }
    const unsigned char *whole_end = p, *fraction = p, *fraction_end = p;
    if (*p == '.') {
        fraction = ++p;
        if (!is_digit(*p)) {
            return NULL;
        }
        do {
            digits = digits * 10 + (uint64_t)(*p++ - '0');
        } while (is_digit(*p));
        fraction_end = p;
    }
    int exponent = 0, exact = 1, integer = fraction == whole_end;
    if (*p == 'e' || *p == 'E') {
        integer = 0;
        p++;
        int minus = *p == '-';
        if (*p == '-' || *p == '+') {
            p++;
        }
        if (!is_digit(*p)) {
            return NULL;
        }
        for (; is_digit(*p); p++) {
            if (exponent < 10000) {
                exponent = exponent * 10 + (*p - '0');
            }
            else {
                exact = 0; /* a capped exponent is not the exponent: strtod's */
            }
        }
        exponent = minus ? -exponent : exponent;
    }
    Py_ssize_t places = fraction_end - fraction;
    if (exact && (whole_end - whole) + places <= 15) {
        /* digits is below 10^15 < 2^53: exact as a double */
        int power = exponent - (int)places;
        if (power >= -22 && power <= 22) {
            double v = (double)digits;
            v = power < 0 ? v / POWERS[-power] : v * POWERS[power];
            /* -0 is Python's int 0; -0.0 and -0e0 are floats and keep their sign. */
            *value = negative && !(integer && digits == 0) ? -v : v;
            return p;
        }
    }
    if (deferred != NULL) {
        /* Below 10^(bound + 1) <= 10^308 < DBL_MAX: finite, whatever the rounding. */
        Py_ssize_t bound = (*whole == '0' ? -1 : (whole_end - whole) - 1) + exponent;
        if (exact && bound <= 307 && defer(deferred, start, p, value)) {
            *value = 0.0;
            return p;
        }
        deferred->wants_gil = 1;
        return NULL;
    }
    char *end;
    double v = PyOS_string_to_double((const char *)start, &end, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear(); /* cannot happen for a valid token; the Python path decides */
        return NULL;
    }
    if ((const unsigned char *)end != p) {
        return NULL;
    }
    *value = v;
    return p;
}

/* The end of a string's contents at p (after the opening quote), or NULL for anything
 * but plain characters: escapes and control characters go to the Python path. */
static inline const unsigned char *
string_end(const unsigned char *p, int *ascii)
{
    unsigned char high = 0;
    for (; *p != '"'; p++) {
        if (*p == '\\' || *p < 0x20) {
            return NULL;
        }
        high |= *p;
    }
    *ascii = high < 0x80;
    return p;
}

/* Whether a string's bytes are well-formed UTF-8 (Unicode's table 3-7), as orjson and
 * CPython's strict decoder require: no overlong forms, no surrogates, nothing above
 * U+10FFFF, no sequence cut short. Plain C, so the GIL can be released around it. */
static int
valid_utf8(const unsigned char *text, Py_ssize_t n)
{
    const unsigned char *p = text, *end = text + n;
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        Py_ssize_t more;
        unsigned char low = 0x80, high = 0xBF; /* the second byte's range */
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            low = c == 0xE0 ? 0xA0 : 0x80;  /* overlong below U+0800 */
            high = c == 0xED ? 0x9F : 0xBF; /* surrogates U+D800..U+DFFF */
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            low = c == 0xF0 ? 0x90 : 0x80;  /* overlong below U+10000 */
            high = c == 0xF4 ? 0x8F : 0xBF; /* above U+10FFFF */
        }
        else {
            return 0; /* a continuation byte first, C0, C1 or F5..FF */
        }
        if (end - p <= more || p[1] < low || p[1] > high) {
            return 0;
        }
        for (Py_ssize_t i = 2; i <= more; i++) {
            if (p[i] < 0x80 || p[i] > 0xBF) {
                return 0;
            }
        }
        p += more + 1;
    }
    return 1;
}

enum { READ = 0, LEFT = 1 };

/* Records one body may hold to be read here: the GIL is held for a whole body, and a
 * longer array goes to the Python path, which checks it in slices. */
#define MAX_RECORDS 64

/* One flat object at p (its '{') into a row of `numbers` and `slots`: the end of the
 * object, or NULL for the Python path. Touches no Python object, so the GIL can be
 * released around it. */
static const unsigned char *
read_record(Layout *self, const unsigned char *p, double *numbers, int64_t *slots)
{
    /* The bytes object ends with a NUL, so scanning stops at the body's end without a
     * check: no token accepted here contains one. */
    uint64_t record = ++self->record;
    Py_ssize_t seen = 0, previous = -1;
    if (*p++ != '{') {
        return NULL;
    }
    p = skip_space(p);
    for (;;) {
        if (*p++ != '"') {
            return NULL;
        }
        int ascii;
        Py_ssize_t f = -1, guess = previous + 1;
        if (guess < self->features.count && self->plain[guess]) {
            /* The key bodies usually have next, compared in place: its name holds no
             * quote, backslash or control byte, so bytes equal to it up to a quote are
             * that key exactly, and a mismatch stops at the body's NUL at the latest. */
            const unsigned char *name = (const unsigned char *)self->features.text[guess];
            Py_ssize_t n = self->features.length[guess], i = 0;
            while (i < n && p[i] == name[i]) {
                i++;
            }
            if (i == n && p[n] == '"') {
                f = guess;
                p += n;
            }
        }
        if (f < 0) {
            const unsigned char *key = p;
            p = string_end(p, &ascii);
            if (p == NULL) {
                return NULL;
            }
            f = find(self, key, p - key, guess);
        }
        if (f < 0 || self->stamp[f] == record) {
            return NULL; /* unknown or repeated */
        }
        self->stamp[f] = record;
        seen++;
        previous = f;
        p = skip_space(p + 1);
        if (*p++ != ':') {
            return NULL;
        }
        p = skip_space(p);
        Py_ssize_t column = self->features.value[f];
        if (column >= 0) {
            p = read_number(p, &numbers[column], self->deferred);
            if (p == NULL || !isfinite(numbers[column])) {
                return NULL;
            }
        }
        else {
            column = -1 - column;
            if (*p++ != '"') {
                return NULL;
            }
            const unsigned char *text = p;
            p = string_end(p, &ascii);
            if (p == NULL) {
                return NULL;
            }
            if (!ascii && !valid_utf8(text, p - text)) {
                return NULL; /* invalid JSON: the Python path's to count */
            }
            Words *vocabulary = &self->vocabulary[column];
            Py_ssize_t j = words_find(vocabulary, text, p - text);
            slots[column] = j < 0 ? self->unseen[column] : vocabulary->value[j];
            p++;
        }
        p = skip_space(p);
        if (*p == '}') {
            break;
        }
        if (*p++ != ',') {
            return NULL;
        }
        p = skip_space(p);
    }
    return seen == self->features.count ? p + 1 : NULL;
}

/* A JSON array of flat objects at p (its '[') into rows from *rows on, at most
 * `capacity` rows in all and MAX_RECORDS from this array: the end of the array, or
 * NULL for the Python path. An empty array is the Python path's ("no_rows"). */
static const unsigned char *
read_records(Layout *self, const unsigned char *p, double *numbers, int64_t *slots,
             Py_ssize_t capacity, Py_ssize_t *rows)
{
    Py_ssize_t first = *rows;
    p = skip_space(p + 1);
    for (;;) {
        if (*rows >= capacity || *rows - first >= MAX_RECORDS) {
            return NULL;
        }
        p = read_record(self, p, numbers + *rows * self->numbers,
                        slots + *rows * self->categories);
        if (p == NULL) {
            return NULL;
        }
        ++*rows;
        p = skip_space(p);
        if (*p == ']') {
            return p + 1;
        }
        if (*p++ != ',') {
            return NULL;
        }
        p = skip_space(p);
    }
}

/* `{"<key>": [` at p (its '{'), `key` quoted: the array's '[', else NULL. */
static const unsigned char *
keyed_array(const unsigned char *p, const char *key, size_t length)
{
    p = skip_space(p + 1);
    if (strncmp((const char *)p, key, length) != 0) { /* stops at the NUL */
        return NULL;
    }
    p = skip_space(p + length);
    if (*p++ != ':') {
        return NULL;
    }
    p = skip_space(p);
    return *p == '[' ? p : NULL;
}

#define KEYED_ARRAY(p, key) keyed_array((p), (key), sizeof(key) - 1)

/* One body: one flat object, an array of them, or `{"instances": [...]}` holding them
 * and nothing else, into rows from *rows on (at most `capacity` rows in all). READ (and
 * *rows moved on) or LEFT. */
static int
read_body(Layout *self, const unsigned char *p, const unsigned char *end, double *numbers,
          int64_t *slots, Py_ssize_t capacity, Py_ssize_t *rows)
{
    Py_ssize_t row = *rows;
    const unsigned char *array;
    p = skip_space(p);
    if (*p == '[') {
        p = read_records(self, p, numbers, slots, capacity, &row);
    }
    else if (*p == '{' && (array = KEYED_ARRAY(p, "\"instances\"")) != NULL) {
        p = read_records(self, array, numbers, slots, capacity, &row);
        if (p != NULL) {
            p = skip_space(p);
            p = *p == '}' ? p + 1 : NULL; /* other keys beside it: the Python path's */
        }
    }
    else if (*p == '{' && row < capacity) {
        p = read_record(self, p, numbers + row * self->numbers,
                        slots + row * self->categories);
        row += p != NULL;
    }
    else {
        return LEFT;
    }
    if (p == NULL || skip_space(p) != end) {
        return LEFT;
    }
    *rows = row;
    return READ;
}

/* The items of a sequence, held in a tuple of our own: creating an object while
 * reading (the list of bodies left, their indices) can run the cyclic GC, whose
 * finalizers could empty a list the caller passed, and free the items read from it.
 * Not PyList_AsTuple: its own tuple allocation can run that GC while it copies from
 * the list's array. Here the copy runs once the tuple exists, with no allocation. */
static PyObject *
held(PyObject *sequence, const char *message)
{
    PyObject *fast = PySequence_Fast(sequence, message);
    if (fast == NULL || PyTuple_CheckExact(fast)) {
        return fast;
    }
    for (;;) {
        Py_ssize_t n = PyList_GET_SIZE(fast);
        PyObject *tuple = PyTuple_New(n);
        if (tuple == NULL) {
            Py_DECREF(fast);
            return NULL;
        }
        if (PyList_GET_SIZE(fast) == n) {
            for (Py_ssize_t i = 0; i < n; i++) {
                PyTuple_SET_ITEM(tuple, i, Py_NewRef(PyList_GET_ITEM(fast, i)));
            }
            Py_DECREF(fast);
            return tuple;
        }
        Py_DECREF(tuple); /* the list changed while the tuple was made: again */
    }
}

/* A writable, C-contiguous (rows x columns) buffer of float64 (`floats`) or int64. */
static int
matrix(PyObject *obj, Py_buffer *view, const char *who, const char *name, int floats,
       Py_ssize_t columns)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return -1;
    }
    const char *format = view->format;
    if (*format == '@' || *format == '=' || *format == '<') {
        format++;
    }
    int ok = view->itemsize == 8 && view->ndim == 2 && view->shape[1] == columns
             && (floats ? strcmp(format, "d") == 0
                        : strcmp(format, "q") == 0 || strcmp(format, "l") == 0);
    if (!ok) {
        PyErr_Format(PyExc_TypeError,
                     "%s: %s must be a C-contiguous %s array of %zd columns", who, name,
                     floats ? "float64" : "int64", columns);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* One body of a read (any object; only exact bytes are read): READ or LEFT. A body
 * left takes back the numbers it deferred, whose row is not the caller's. */
static char
read_item(Layout *self, PyObject *item, double *numbers, int64_t *slots,
          Py_ssize_t capacity, Py_ssize_t *rows)
{
    if (!PyBytes_CheckExact(item)) {
        return LEFT;
    }
    Py_ssize_t noted = self->deferred != NULL ? self->deferred->count : 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(item);
    int status = read_body(self, p, p + PyBytes_GET_SIZE(item), numbers, slots, capacity,
                           rows);
    if (status != READ && self->deferred != NULL) {
        self->deferred->count = noted;
    }
    return (char)status;
}

/* The deferred numbers into their places, the GIL held: 0, or -1 with an exception
 * (no memory, or a token strtod reads otherwise than the grammar did: a bug). */
static int
convert_deferred(Deferred *d)
{
    for (Py_ssize_t i = 0; i < d->count; i++) {
        const Note *note = &d->notes[i];
        char *end;
        double v = PyOS_string_to_double(note->start, &end, NULL);
        if (v == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        if (end != note->end || !isfinite(v)) {
            PyErr_SetString(PyExc_SystemError, "Layout.read: a deferred number read otherwise");
            return -1;
        }
        *note->into = v;
    }
    d->count = 0;
    return 0;
}

static PyObject *
layout_read(Layout *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start = 0, budget = -1;
    if (nargs < 3 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError,
                        "Layout.read(bodies, numbers, slots, start=0, budget=-1)");
        return NULL;
    }
    if (nargs > 3 && ((start = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())) {
        return NULL;
    }
    if (nargs > 4 && ((budget = PyLong_AsSsize_t(args[4])) == -1 && PyErr_Occurred())) {
        return NULL;
    }
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "Layout.read: start must be >= 0");
        return NULL;
    }
    if (!self->ready) {
        PyErr_SetString(PyExc_TypeError, "Layout.read: the layout was not initialised");
        return NULL;
    }
    PyObject *bodies = held(args[0], "Layout.read: bodies must be a sequence");
    if (bodies == NULL) {
        return NULL;
    }
    Py_buffer x, s;
    if (matrix(args[1], &x, "Layout.read", "numbers", 1, self->numbers) < 0) {
        Py_DECREF(bodies);
        return NULL;
    }
    if (matrix(args[2], &s, "Layout.read", "slots", 0, self->categories) < 0) {
        PyBuffer_Release(&x);
        Py_DECREF(bodies);
        return NULL;
    }
    /* The bodies this call reads: up to `budget` bytes (at least one body). */
    Py_ssize_t n = PySequence_Fast_GET_SIZE(bodies);
    Py_ssize_t spent = 0, i = start;
    for (; i < n && (budget < 0 || i == start || spent < budget); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(bodies, i);
        spent += PyBytes_CheckExact(item) ? PyBytes_GET_SIZE(item) : 0;
    }
    Py_ssize_t stop = i, count = stop > start ? stop - start : 0;
    PyObject *result = NULL;
    char *read = PyMem_Malloc(count ? count : 1); /* per body: READ or LEFT */
    if (read == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Checked and set with no Python code between (which could let another thread in). */
    if (self->reading) {
        PyErr_SetString(PyExc_RuntimeError, "Layout.read: already reading in another thread");
        goto done;
    }
    /* Parsing touches no Python object: the bodies are held by our tuple and bytes are
     * immutable, the matrices by their buffers. So the serving thread can run meanwhile
     * (on another core, or as soon as it wakes on this one). */
    Py_ssize_t capacity = x.shape[0] < s.shape[0] ? x.shape[0] : s.shape[0];
    Py_ssize_t rows = 0;
    Deferred deferred = {0};
    int failed = 0;
    self->reading = 1;
    for (Py_ssize_t j = 0; j < count && !failed;) {
        self->deferred = &deferred;
        Py_BEGIN_ALLOW_THREADS
        for (; j < count; j++) {
            deferred.wants_gil = 0;
            read[j] = read_item(self, PySequence_Fast_GET_ITEM(bodies, start + j), x.buf,
                                s.buf, capacity, &rows);
            if (deferred.wants_gil) {
                break;
            }
        }
        Py_END_ALLOW_THREADS
        self->deferred = NULL;
        failed = convert_deferred(&deferred) < 0;
        if (j < count && !failed) {
            /* A number CPython's strtod must read at once: this body again, the GIL held. */
            read[j] = read_item(self, PySequence_Fast_GET_ITEM(bodies, start + j), x.buf,
                                s.buf, capacity, &rows);
            j++;
        }
    }
    self->reading = 0;
    PyMem_RawFree(deferred.notes);
    if (failed) {
        goto done;
    }
    PyObject *left = PyList_New(0);
    for (Py_ssize_t j = 0; left != NULL && j < count; j++) {
        if (read[j] == LEFT) {
            PyObject *index = PyLong_FromSsize_t(start + j);
            if (index == NULL || PyList_Append(left, index) < 0) {
                Py_CLEAR(left);
            }
            Py_XDECREF(index);
        }
    }
    result = left == NULL ? NULL : Py_BuildValue("(nnO)", stop, rows, left);
    Py_XDECREF(left);
done:
    PyMem_Free(read);
    PyBuffer_Release(&x);
    PyBuffer_Release(&s);
    Py_DECREF(bodies);
    return result;
}

/* -- responses: `{"predictions": [x]}` ------------------------------------------ */

/* Whether headers say the body is sent as it is (the worker's `_identity`): no
 * Content-Encoding, or an empty one, at the first such header. 1, 0, or -1 for headers
 * not as servers send them (a tuple or list of (bytes, bytes) pairs): the Python
 * path's. */
static int
identity(PyObject *headers)
{
    if (!PyTuple_CheckExact(headers) && !PyList_CheckExact(headers)) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            return -1;
        }
        PyObject *key = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (!PyBytes_CheckExact(key) || !PyBytes_CheckExact(value)) {
            return -1;
        }
        if (PyBytes_GET_SIZE(key) == 16
            && PyOS_strnicmp(PyBytes_AS_STRING(key), "content-encoding", 16) == 0) {
            return PyBytes_GET_SIZE(value) == 0;
        }
    }
    return 1;
}

/* The bytes from p to end as `{"predictions": [x]}`, x into *value: 1; else 0 (the
 * Python path's). x is a finite JSON number; an integer of at most 15 digits, which the
 * worker's Python path takes into the column too (it takes ints up to 2**53 exactly). */
static int
read_prediction(const unsigned char *p, const unsigned char *end, double *value)
{
    p = skip_space(p);
    if (*p != '{' || (p = KEYED_ARRAY(p, "\"predictions\"")) == NULL) {
        return 0;
    }
    const unsigned char *number = p = skip_space(p + 1);
    double v;
    p = read_number(p, &v, NULL);
    if (p == NULL || !isfinite(v)) {
        return 0;
    }
    if (strcspn((const char *)number, ".eE") >= (size_t)(p - number)
        && p - number - (*number == '-') > 15) {
        return 0; /* an integer Python takes exactly only below 10**15 here */
    }
    p = skip_space(p);
    if (*p++ != ']') {
        return 0;
    }
    p = skip_space(p);
    if (*p++ != '}') {
        return 0;
    }
    if (skip_space(p) != end) {
        return 0;
    }
    *value = v;
    return 1;
}

static PyObject *
read_predictions(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read_predictions(bodies, headers, out)");
        return NULL;
    }
    PyObject *bodies = held(args[0], "read_predictions: bodies must be a sequence");
    if (bodies == NULL) {
        return NULL;
    }
    PyObject *headers = held(args[1], "read_predictions: headers must be a sequence");
    if (headers == NULL) {
        Py_DECREF(bodies);
        return NULL;
    }
    Py_buffer out;
    if (matrix(args[2], &out, "read_predictions", "out", 1, 1) < 0) {
        Py_DECREF(headers);
        Py_DECREF(bodies);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(bodies);
    if (PySequence_Fast_GET_SIZE(headers) != n || out.shape[0] < n) {
        PyErr_SetString(PyExc_ValueError,
                        "read_predictions: one headers entry and one row of out per body");
        PyBuffer_Release(&out);
        Py_DECREF(headers);
        Py_DECREF(bodies);
        return NULL;
    }
    double *values = (double *)out.buf;
    PyObject *left = PyList_New(0);
    Py_ssize_t rows = 0;
    for (Py_ssize_t i = 0; left != NULL && i < n; i++) {
        PyObject *body = PySequence_Fast_GET_ITEM(bodies, i); /* held by our tuple */
        int read = 0;
        if (PyBytes_CheckExact(body) && identity(PySequence_Fast_GET_ITEM(headers, i)) == 1) {
            const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(body);
            read = read_prediction(p, p + PyBytes_GET_SIZE(body), &values[rows]);
        }
        if (read) {
            rows++;
            continue;
        }
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL || PyList_Append(left, index) < 0) {
            Py_CLEAR(left);
        }
        Py_XDECREF(index);
    }
    PyObject *result = left == NULL ? NULL : Py_BuildValue("(nO)", rows, left);
    Py_XDECREF(left);
    PyBuffer_Release(&out);
    Py_DECREF(headers);
    Py_DECREF(bodies);
    return result;
}

static void
layout_dealloc(Layout *self)
{
    PyTypeObject *type = Py_TYPE(self);
    words_free(&self->features);
    for (Py_ssize_t j = 0; self->vocabulary != NULL && j < self->categories; j++) {
        words_free(&self->vocabulary[j]);
    }
    PyMem_Free(self->vocabulary);
    PyMem_Free(self->unseen);
    PyMem_Free(self->stamp);
    PyMem_Free(self->plain);
    Py_XDECREF(self->keep);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* `text`'s UTF-8 bytes, kept alive by the layout; NULL with an exception set. */
static const char *
kept_utf8(Layout *self, PyObject *text, Py_ssize_t *length)
{
    PyObject *utf8 = PyUnicode_AsUTF8String(text);
    if (utf8 == NULL || PyList_Append(self->keep, utf8) < 0) {
        Py_XDECREF(utf8);
        return NULL;
    }
    Py_DECREF(utf8); /* the list holds it */
    *length = PyBytes_GET_SIZE(utf8);
    return PyBytes_AS_STRING(utf8);
}

static int
add_vocabulary(Layout *self, Words *words, PyObject *vocabulary)
{
    /* The dict's str keys and their int slots, as they are now. */
    if (words_init(words, PyDict_GET_SIZE(vocabulary)) < 0) {
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *slot;
    while (PyDict_Next(vocabulary, &pos, &key, &slot)) {
        if (!PyUnicode_CheckExact(key)) {
            continue; /* None, ABSENT: not a string a body can hold */
        }
        Py_ssize_t n;
        const char *text = kept_utf8(self, key, &n);
        if (text == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                return -1;
            }
            PyErr_Clear(); /* a lone surrogate: no valid body holds it */
            continue;
        }
        /* An exact int: converting it runs no code that could change the dict. */
        long long value = PyLong_CheckExact(slot) ? PyLong_AsLongLong(slot) : -1;
        if (value < 0) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_ValueError, "Layout: slot %R of %R is not an int >= 0",
                             slot, key);
            }
            return -1;
        }
        if (words_add(words, text, n, value) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
layout_init(Layout *self, PyObject *args, PyObject *kwargs)
{
    /* Layout(features): a sequence of (name, vocabulary, unseen slot) per feature, the
     * vocabulary None for a numeric feature (its column: the count of numeric features
     * before it) or a dict str -> int slot for a categorical one, read once here. */
    static char *keywords[] = {"features", NULL};
    PyObject *features;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Layout", keywords, &features)) {
        return -1;
    }
    if (self->keep != NULL) {
        PyErr_SetString(PyExc_TypeError, "Layout is initialised once");
        return -1;
    }
    PyObject *seq = PySequence_Fast(features, "Layout: features must be a sequence");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    self->keep = PyList_New(0);
    self->vocabulary = PyMem_Calloc(k + 1, sizeof(Words));
    self->unseen = PyMem_Calloc(k + 1, sizeof(int64_t));
    self->stamp = PyMem_Calloc(k + 1, sizeof(uint64_t));
    self->plain = PyMem_Calloc(k + 1, 1);
    if (self->keep == NULL || self->vocabulary == NULL || self->unseen == NULL
        || self->stamp == NULL || self->plain == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    if (words_init(&self->features, k) < 0) {
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t f = 0; f < k; f++) {
        PyObject *name, *vocabulary;
        long long unseen;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, f);
        if (!PyTuple_Check(item)
            || !PyArg_ParseTuple(item, "UOL:Layout feature", &name, &vocabulary, &unseen)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError,
                                "Layout: each feature is (name, vocabulary or None, unseen)");
            }
            Py_DECREF(seq);
            return -1;
        }
        Py_ssize_t n;
        const char *text = kept_utf8(self, name, &n);
        if (text == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        int64_t column;
        if (vocabulary == Py_None) {
            column = self->numbers++;
        }
        else if (PyDict_Check(vocabulary)) {
            if (unseen < 0) {
                PyErr_Format(PyExc_ValueError, "Layout: feature %R's unseen slot is negative",
                             name);
                Py_DECREF(seq);
                return -1;
            }
            Py_ssize_t c = self->categories++;
            self->unseen[c] = unseen;
            if (add_vocabulary(self, &self->vocabulary[c], vocabulary) < 0) {
                Py_DECREF(seq);
                return -1;
            }
            column = -1 - c;
        }
        else {
            PyErr_Format(PyExc_TypeError, "Layout: feature %R's vocabulary must be a dict",
                         name);
            Py_DECREF(seq);
            return -1;
        }
        self->plain[f] = n > 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)text[i];
            if (c == '"' || c == '\\' || c < 0x20) {
                self->plain[f] = 0;
            }
        }
        int added = words_add(&self->features, text, n, column);
        if (added != 0) {
            if (added > 0) {
                PyErr_Format(PyExc_ValueError, "Layout: feature %R is named twice", name);
            }
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    self->ready = 1;
    return 0;
}

static PyObject *
layout_get_numbers(Layout *self, void *closure)
{
    return PyLong_FromSsize_t(self->numbers);
}

static PyObject *
layout_get_categories(Layout *self, void *closure)
{
    return PyLong_FromSsize_t(self->categories);
}

static PyMethodDef layout_methods[] = {
    {"read", (PyCFunction)(void (*)(void))layout_read, METH_FASTCALL,
     "read(bodies, numbers, slots, start=0, budget=-1) -> (stop, rows, left)\n\n"
     "Reads bodies[start:stop], stopping once `budget` bytes were read (at least one\n"
     "body; all with a negative budget). `rows`: rows written; `left`: the indices\n"
     "of the bodies left for the Python path.\n\n"
     "The records read fill rows 0, 1, ... of `numbers` (float64, rows x numeric\n"
     "features) and `slots` (int64, rows x categorical features), in order; a body\n"
     "whose records would not fit is left."},
    {NULL},
};

static PyGetSetDef layout_getset[] = {
    {"numbers", (getter)layout_get_numbers, NULL, "numeric features (columns)", NULL},
    {"categories", (getter)layout_get_categories, NULL, "categorical features", NULL},
    {NULL},
};

static PyType_Slot layout_slots[] = {
    {Py_tp_doc, "The features of a flat JSON record and where each one's values go."},
    {Py_tp_init, layout_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, layout_dealloc},
    {Py_tp_methods, layout_methods},
    {Py_tp_getset, layout_getset},
    {0, NULL},
};

static PyType_Spec layout_spec = {
    .name = "sidecar._records.Layout",
    .basicsize = sizeof(Layout),
    .flags = Py_TPFLAGS_DEFAULT, /* holds only bytes: no cycles */
    .slots = layout_slots,
};

static PyObject *
identity_py(PyObject *module, PyObject *headers)
{
    return PyBool_FromLong(identity(headers) == 1);
}

static PyMethodDef module_methods[] = {
    {"identity", identity_py, METH_O,
     "identity(headers) -> bool\n\n"
     "True when the headers, a tuple or list of (bytes, bytes) pairs, say the body is\n"
     "sent as it is: no Content-Encoding, or an empty one, at the first such header.\n"
     "False for any other headers, including ones of other types (the worker's slow\n"
     "path reads those)."},
    {"read_predictions", (PyCFunction)(void (*)(void))read_predictions, METH_FASTCALL,
     "read_predictions(bodies, headers, out) -> (rows, left)\n\n"
     "Reads each body that is `{\"predictions\": [x]}`, x a finite JSON number (an\n"
     "integer of at most 15 digits), sent with no Content-Encoding, into rows\n"
     "0, 1, ... of `out` (float64, at least one row per body, one column). `left`:\n"
     "the indices of the bodies left for the Python path."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sidecar._records",
    .m_methods = module_methods,
    .m_doc = "Flat JSON records read straight into columns (see sidecar/records.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__records(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *type = PyType_FromSpec(&layout_spec);
    if (type == NULL || PyModule_AddObject(m, "Layout", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
