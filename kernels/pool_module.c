/*
 * tmac_convert._pool_native: owns the package's one native worker pool (pool.c) and hands it to the other
 * extensions as the PyCapsule TMAC_POOL_CAPSULE (pool.h says why a capsule).  From Python it only reports
 * how many workers exist and how often they slept, for tests and diagnostics.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pool.h"

static PyObject *py_workers(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyLong_FromLong(tmac_pool()->workers());
}

static PyObject *py_sleeps(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyLong_FromUnsignedLongLong(tmac_pool_sleeps());
}

static PyMethodDef methods[] = {
    {"workers", py_workers, METH_NOARGS, "workers() -> int: pool worker threads started in this process."},
    {"sleeps", py_sleeps, METH_NOARGS, "sleeps() -> int: times a worker has gone to sleep waiting for a job."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pool_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pool_native(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *cap = PyCapsule_New((void *)tmac_pool(), TMAC_POOL_CAPSULE, NULL);
    if (!cap || PyModule_AddObject(m, "_C_API", cap) < 0) {
        Py_XDECREF(cap);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
