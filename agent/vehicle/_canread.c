/* agent.vehicle._canread: the live path's socket read in C (optional; see sockread.py).
 *
 * One call drains a datagram socket carrying the kernel's `struct can_frame` (16 bytes) and
 * `struct canfd_frame` (72 bytes) with recvmmsg(2), up to 64 frames a system call, and returns
 * each frame as the hot path's tuple (key, data, timestamp), exactly as sockread.FrameReader's
 * Python paths build it (tests/vehicle/test_sockread.py holds the three to the same output).
 * It exists because building those tuples in Python cost more than the system call itself
 * (docs/performance.md): here it is three objects a frame and nothing else.
 *
 * The GIL is held throughout (the socket is non-blocking: the call never waits), so one set
 * of static buffers serves every socket of the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64           /* frames per recvmmsg call, as sockread.BATCH */
#define CANFD_MTU 72       /* sizeof(struct canfd_frame) */
#define HEADER 8           /* can_id, len, flags, res0, len8_dlc */
#define CONTROL 64         /* ancillary bytes a frame: a timespec and a uint32, with headers */
#define CAN_EFF_FLAG 0x80000000u
#define SFF_KEY_MASK 0x600007FFu /* an 11-bit id keeps its id and the RTR and ERR flags */

#ifndef SO_TIMESTAMPNS
#define SO_TIMESTAMPNS 35
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

static unsigned char frames_buf[BATCH][CANFD_MTU];
/* cmsg headers want 8-byte alignment */
static unsigned char control_buf[BATCH][CONTROL] __attribute__((aligned(8)));
static struct iovec iovs[BATCH];
static struct mmsghdr msgs[BATCH];

/* A CAN FD `len` between the valid lengths rounds up, as python-can's dissect_can_frame does
 * (frames.PAYLOAD_LENGTH). */
static unsigned int payload_length(unsigned int length) {
    static const unsigned char up[] = {8, 12, 12, 12, 12, 16, 16, 16, 16, 20, 20, 20, 20,
                                       24, 24, 24, 24, 32, 32, 32, 32, 32, 32, 32, 32};
    if (length <= 8) return length;
    if (length <= 32) return up[length - 8];
    return length <= 48 ? 48 : 64;
}

static double now_s(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* The frame's tuple, or NULL with an exception set. */
static PyObject *frame_tuple(int i) {
    const unsigned char *raw = frames_buf[i];
    unsigned int received = msgs[i].msg_len;
    uint32_t can_id;
    memcpy(&can_id, raw, sizeof can_id);
    unsigned int length = payload_length(raw[4]);
    if (length > received - HEADER) length = received - HEADER; /* never past the datagram */
    uint32_t key = (can_id & CAN_EFF_FLAG) ? can_id : (can_id & SFF_KEY_MASK);

    /* The kernel's receive time (same arithmetic as Python's `sec + nsec * 1e-9`); a frame
     * without one (never seen on Linux) gets the time of reading. */
    double ts = -1.0;
    struct msghdr *hdr = &msgs[i].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(hdr); c != NULL; c = CMSG_NXTHDR(hdr, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(c), sizeof stamp);
            ts = (double)stamp.tv_sec + (double)stamp.tv_nsec * 1e-9;
            break;
        }
    }
    if (ts < 0) ts = now_s();

    PyObject *out = PyTuple_New(3);
    if (out == NULL) return NULL;
    PyObject *k = PyLong_FromUnsignedLong(key);
    PyObject *data = PyBytes_FromStringAndSize((const char *)raw + HEADER, length);
    PyObject *t = PyFloat_FromDouble(ts);
    /* PyTuple_SET_ITEM steals the references; a NULL slot is freed as nothing */
    PyTuple_SET_ITEM(out, 0, k);
    PyTuple_SET_ITEM(out, 1, data);
    PyTuple_SET_ITEM(out, 2, t);
    if (k == NULL || data == NULL || t == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* The SO_RXQ_OVFL count in frame i's ancillary data, or -1 when absent (the kernel adds it
 * once the count is above 0). */
static long long drops_of(int i) {
    struct msghdr *hdr = &msgs[i].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(hdr); c != NULL; c = CMSG_NXTHDR(hdr, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL &&
            c->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
            uint32_t drops;
            memcpy(&drops, CMSG_DATA(c), sizeof drops);
            return (long long)drops;
        }
    }
    return -1;
}

PyDoc_STRVAR(read_frames_doc,
             "read_frames(fd, limit) -> (frames, drained, drops, short, error)\n\n"
             "Up to `limit` datagrams from the non-blocking socket `fd`, oldest first, as\n"
             "(key, data, timestamp) tuples; `drained`: the socket would block now; `drops`:\n"
             "the newest SO_RXQ_OVFL count seen, or -1; `short`: datagrams shorter than a\n"
             "frame header, left out; `error`: the errno that ended the read after frames\n"
             "were read (a socket reports some errors once: the caller keeps it), else 0.\n"
             "OSError when the error comes before any frame.");

static PyObject *read_frames(PyObject *module, PyObject *args) {
    int fd;
    Py_ssize_t limit;
    (void)module;
    if (!PyArg_ParseTuple(args, "in:read_frames", &fd, &limit)) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    long long drops = -1;
    long short_frames = 0;
    int drained = 0;
    int error = 0;
    Py_ssize_t taken = 0; /* datagrams, short ones too: a stream of empty ones must end */
    while (taken < limit) {
        Py_ssize_t want = limit - taken;
        if (want > BATCH) want = BATCH;
        for (Py_ssize_t i = 0; i < want; i++) {
            iovs[i].iov_base = frames_buf[i];
            iovs[i].iov_len = CANFD_MTU;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = control_buf[i];
            msgs[i].msg_hdr.msg_controllen = CONTROL;
        }
        int got = recvmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT, NULL);
        int code = errno; /* before anything else can touch it */
        if (got < 0) {
            if (code == EINTR) continue;
            if (code == EAGAIN || code == EWOULDBLOCK) {
                drained = 1;
                break;
            }
            if (taken > 0) { /* keep what was read; the caller raises the error next */
                error = code;
                break;
            }
            Py_DECREF(out);
            errno = code;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        taken += got;
        for (int i = 0; i < got; i++) {
            if (msgs[i].msg_len < HEADER) { /* not a CAN frame (a socket pair carries any) */
                short_frames++;
                continue;
            }
            PyObject *frame = frame_tuple(i);
            if (frame == NULL || PyList_Append(out, frame) < 0) {
                Py_XDECREF(frame);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(frame);
        }
        if (got > 0) {
            /* each frame carries the count when it was queued: the last is the newest */
            long long last = drops_of(got - 1);
            if (last >= 0) drops = last;
        }
        if (got < want) {
            drained = 1;
            break;
        }
    }
    return Py_BuildValue("NNLli", out, PyBool_FromLong(drained), drops, short_frames, error);
}

static PyMethodDef methods[] = {
    {"read_frames", read_frames, METH_VARARGS, read_frames_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "agent.vehicle._canread",
    "The live path's socket read in C: see agent/vehicle/_canread.c.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__canread(void) { return PyModule_Create(&module_def); }
