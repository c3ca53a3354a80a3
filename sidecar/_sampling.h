/* The compiled sampler's state (sidecar/_sampling.c), shared with the gate
 * (sidecar/_gate.c), which counts a request down in the struct itself: through the
 * attribute it cost two generic lookups and a new int per request. */
#ifndef SIDECAR_SAMPLING_H
#define SIDECAR_SAMPLING_H

#include <Python.h>

typedef struct {
    PyObject_HEAD
    long long countdown;
    long long gap;
    long long drawn;
    long long refused; /* requests the token bucket refused */
    long long thinned; /* requests of gaps ended while the cap thinned */
    double thinning;
    double max_per_second;
    double estimated_at;
    double tokens;
    double filled_at;
    double capacity;
    PyObject *gaps;  /* list of ints, taken from the end */
    PyObject *clock; /* callable returning seconds */
} SamplerCore;

#endif
