/* A failure inside the monitor, counted as the Python code counts it
 * (`except Exception: monitor._error(where)`, which logs it once with its traceback),
 * shared by the compiled tap (sidecar/_tap.c) and gate (sidecar/_gate.c). */
#ifndef SIDECAR_COUNTED_H
#define SIDECAR_COUNTED_H

#include <Python.h>

/* The exception set now goes to monitor._error(where), then is cleared: 0. Only an
 * Exception: anything else (a KeyboardInterrupt) is left set, -1, as `except
 * Exception` leaves it. */
static int
count_exception(PyObject *monitor, const char *where)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    /* The handled exception while `_error` runs, for its logger.exception. */
    PyObject *old_type, *old_value, *old_traceback;
    PyErr_GetExcInfo(&old_type, &old_value, &old_traceback);
    PyErr_SetExcInfo(type, value, traceback);
    PyObject *done = PyObject_CallMethod(monitor, "_error", "s", where);
    if (done == NULL) {
        PyErr_Clear(); /* the monitor's own failure: nothing more to do */
    }
    Py_XDECREF(done);
    PyErr_SetExcInfo(old_type, old_value, old_traceback);
    return 0;
}

#endif
