/*
 * _uring.c: serve a pyfuse3 session over FUSE's io_uring interface.
 *
 * The classic loop reads each request from /dev/fuse on the trio thread and
 * writes the reply back: every request wakes a thread on whichever CPU it
 * runs, and on a VM a wake-up across vCPUs is the largest cost of a small
 * request (docs/design.md). Over io_uring (Linux 6.14+, fuse's module
 * parameter enable_uring) the kernel keeps one queue per CPU and hands a
 * request to the queue of the CPU it was made on; one thread per queue,
 * pinned there, serves it and answers in the same system call that fetches
 * the next one.
 *
 * libfuse 3.14 knows nothing of io_uring. This module uses its custom I/O
 * (fuse_session_custom_io) to
 *   - see FUSE_INIT and, when the kernel offers it, add FUSE_OVER_IO_URING
 *     to the reply (writev hook);
 *   - start the queue threads once that reply is written; each registers
 *     its ring entries (IORING_OP_URING_CMD on /dev/fuse);
 *   - for each request from a ring, rebuild /dev/fuse's layout in front of
 *     the payload (no copy of the payload) and call a Python function with
 *     the GIL, which has pyfuse3 decode and run it (seldonfs/uring.py);
 *   - catch the reply libfuse writes on that thread (writev hook, matched
 *     by the request's unique id) and put it in the ring entry.
 * A GETXATTR of a probed name (inodes.PROBED_XATTRS) that the inode's bits
 * say it lacks is answered ENODATA here, without the GIL: `ls -l` asks for
 * two such names on every file and the kernel for security.capability
 * before every write(2), and the Python round trip costs twice what the
 * kernel's does (docs/design.md, "Absent xattrs answered in the queue"). Core
 * keeps the bits (`absent`), under the GIL; the queue threads only read.
 * What still comes through /dev/fuse (INIT, FORGET, INTERRUPT, anything
 * before every queue is registered) passes through unchanged, to pyfuse3's
 * loop on the trio thread. Notifications (unique 0) go to /dev/fuse too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <liburing.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <unistd.h>

/* The kernel's ABI (include/uapi/linux/fuse.h, protocol 7.42); Debian 12's
 * headers predate it. */
#define OVER_IO_URING_FLAGS2 (1u << 9) /* FUSE_OVER_IO_URING >> 32 */
#define INIT_EXT (1u << 30)            /* FUSE_INIT_EXT */
#define HEADER_SZ 128
#define OP_SZ 128
struct ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};
struct req_header {
	char in_out[HEADER_SZ]; /* fuse_in_header in, fuse_out_header out */
	char op_in[OP_SZ];      /* the operation's own header */
	struct ent_in_out ent_in_out;
};
enum { CMD_REGISTER = 1, CMD_COMMIT_AND_FETCH = 2 };
struct cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};
/* the part of fuse_init_in this reads (protocol 7.36+) */
struct init_in {
	uint32_t major, minor, max_readahead, flags, flags2;
};

#define MAX_DEPTH 64
#define SCRATCH 4096 /* room in front of the payload for the two headers */
#define MIN_PAYLOAD 8192

struct queue;
struct ent {
	struct queue *q;
	struct req_header *hdr;
	char *payload; /* SCRATCH bytes into its mapping */
	struct iovec iov[2];
	uint64_t unique;
	uint64_t commit_id;
	int replied;
};

struct queue {
	int qid;
	pthread_t tid;
	int evfd;
	struct io_uring ring;
	int ring_ok;
	PyThreadState *ts;
	struct ent ents[MAX_DEPTH];
	unsigned long requests, unanswered;
	int error; /* the first unexpected errno of a ring command */
	int ended; /* set up, then its thread ended on an error: its CPU's requests wait */
};

static struct fuse_session *g_se;
static int g_devfd = -1;
static PyObject *g_dispatch;
static int g_depth;
static int g_nq;
static struct queue *g_queues;
static size_t g_payload_sz;
static atomic_int g_stop;
static uint64_t g_init_unique;
static int g_offered;  /* the kernel offered FUSE_OVER_IO_URING */
static int g_accepted; /* we said yes in the INIT reply */
static int g_started;  /* queue threads started */
static uint32_t g_max_write;
static uint16_t g_max_pages;
static atomic_ulong g_dev_requests;
static atomic_int g_init_seen, g_queues_failed;
/* faults.py's "ring:N:ERRNO": queue 0 ends after answering its Nth
 * request, as on an unexpected error of its ring */
static unsigned long g_fault_at;
static int g_fault_errno;

static __thread struct ent *cur_ent;
static int g_idle_wait; /* queue threads wait as SCHED_IDLE (idle_wait_works) */

/* Probed xattrs an inode lacks: slot (ino * K) >> SHIFT holds (ino << 8) |
 * bits, one word, so a reader sees a whole entry or none. An entry can be
 * displaced by another inode's (the request then goes to Python), and the
 * inode's word is the only place its bits are, so clearing them there is
 * enough. Inode numbers of 2^56 and above are not kept. */
#define ABSENT_BITS 16
#define MAX_PROBED 8
static _Atomic uint64_t g_absent[1 << ABSENT_BITS];
static char g_probed[MAX_PROBED][32]; /* bit i: name i, NUL-terminated */
static size_t g_probed_len[MAX_PROBED]; /* with the NUL; 0: none */
static atomic_ulong g_absent_answers;

static _Atomic uint64_t *absent_slot(uint64_t ino)
{
	return &g_absent[(ino * 0x9E3779B97F4A7C15ull) >> (64 - ABSENT_BITS)];
}

/* Answer `e` ENODATA when it asks for a probed xattr its inode lacks. */
static int answer_absent(struct ent *e, const struct fuse_in_header *in, uint32_t psz)
{
	uint64_t word;
	struct fuse_out_header *out;

	if (in->opcode != FUSE_GETXATTR || in->nodeid >> 56)
		return 0;
	word = atomic_load_explicit(absent_slot(in->nodeid), memory_order_acquire);
	if (word >> 8 != in->nodeid || (word & 0xff) == 0)
		return 0;
	for (int i = 0; i < MAX_PROBED; i++) {
		if ((word & (1u << i)) && g_probed_len[i] == psz &&
		    memcmp(e->payload, g_probed[i], psz) == 0) {
			uint64_t unique = in->unique; /* `out` is where `in` was */

			out = (void *)e->hdr->in_out;
			memset(out, 0, sizeof(*out));
			out->len = sizeof(*out);
			out->error = -ENODATA;
			out->unique = unique;
			e->hdr->ent_in_out.payload_sz = 0;
			atomic_fetch_add_explicit(&g_absent_answers, 1, memory_order_relaxed);
			return 1;
		}
	}
	return 0;
}

static void *map(size_t sz)
{
	void *p = mmap(NULL, sz, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void prep_cmd(struct queue *q, struct ent *e, int cmd)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	struct cmd_req *req;

	if (sqe == NULL) { /* one per entry and one for the eventfd: never */
		fprintf(stderr, "seldonfs: io_uring queue %d: no SQE\n", q->qid);
		abort();
	}
	memset(sqe, 0, 128); /* SQE128 */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = g_devfd;
	sqe->cmd_op = cmd;
	io_uring_sqe_set_data(sqe, e);
	req = (struct cmd_req *)sqe->cmd;
	req->qid = q->qid;
	if (cmd == CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)e->iov;
		sqe->len = 2;
	} else {
		req->commit_id = e->commit_id;
	}
}

/* ---- libfuse's custom I/O ---- */

static ssize_t hook_read(int fd, void *buf, size_t len, void *ud)
{
	ssize_t r = read(fd, buf, len);
	struct fuse_in_header *in = buf;

	(void)ud;
	if (r < (ssize_t)sizeof(*in))
		return r;
	atomic_fetch_add_explicit(&g_dev_requests, 1, memory_order_relaxed);
	if (in->opcode == FUSE_INIT &&
	    r >= (ssize_t)(sizeof(*in) + sizeof(struct init_in))) {
		struct init_in *ii = (void *)(in + 1);

		g_init_unique = in->unique;
		g_offered = (ii->flags & INIT_EXT) &&
			    (ii->flags2 & OVER_IO_URING_FLAGS2);
		atomic_store(&g_init_seen, 1);
	}
	return r;
}

static int start_queues(void);

/* The INIT reply: say yes to io_uring when offered, then start the queues
 * (the kernel has taken the reply once write() returns). */
static ssize_t write_init_reply(int fd, struct iovec *iov, int count)
{
	char buf[512];
	size_t tot = 0;
	ssize_t r;
	struct fuse_out_header *out = iov[0].iov_base;
	struct fuse_init_out *io = (void *)(buf + sizeof(*out));

	g_init_unique = 0;
	if (!g_offered || out->error != 0)
		return writev(fd, iov, count);
	for (int i = 0; i < count; i++) {
		if (tot + iov[i].iov_len > sizeof(buf))
			return writev(fd, iov, count);
		memcpy(buf + tot, iov[i].iov_base, iov[i].iov_len);
		tot += iov[i].iov_len;
	}
	if (tot < sizeof(*out) + offsetof(struct fuse_init_out, flags2) + 4)
		return writev(fd, iov, count);
	io->flags |= INIT_EXT;
	io->flags2 |= OVER_IO_URING_FLAGS2;
	g_max_write = io->max_write;
	g_max_pages = io->max_pages;
	r = write(fd, buf, tot);
	if (r == (ssize_t)tot) {
		g_accepted = 1;
		start_queues();
	}
	return r;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *ud)
{
	struct fuse_out_header *out = iov[0].iov_base;
	struct ent *e = cur_ent;
	size_t off = 0;

	(void)ud;
	if (e == NULL || out->unique == 0 || out->unique != e->unique ||
	    iov[0].iov_len != sizeof(*out)) {
		if (out->unique != 0 && out->unique == g_init_unique)
			return write_init_reply(fd, iov, count);
		return writev(fd, iov, count);
	}
	/* the answer to the ring request this thread serves */
	for (int i = 1; i < count; i++) {
		if (off + iov[i].iov_len > g_payload_sz) {
			out->error = -EIO;
			off = 0;
			break;
		}
		memcpy(e->payload + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	out->len = sizeof(*out) + off;
	memcpy(e->hdr->in_out, out, sizeof(*out));
	e->hdr->ent_in_out.payload_sz = off;
	e->replied = 1;
	return sizeof(*out) + off;
}

static const struct fuse_custom_io hooks = {
	.writev = hook_writev,
	.read = hook_read,
};

/* ---- the queue threads ---- */

static void serve(struct queue *q, struct ent *e)
{
	struct fuse_in_header *in = (void *)e->hdr->in_out;
	uint32_t psz = e->hdr->ent_in_out.payload_sz;
	size_t oplen;
	char *start;
	PyObject *res;

	e->commit_id = e->hdr->ent_in_out.commit_id;
	e->unique = in->unique;
	e->replied = 0;
	q->requests++;
	if (answer_absent(e, in, psz)) {
		e->unique = 0;
		return;
	}
	if (in->len >= sizeof(*in) + psz && psz <= g_payload_sz &&
	    (oplen = in->len - sizeof(*in) - psz) <= OP_SZ) {
		start = e->payload - sizeof(*in) - oplen;
		memcpy(start, in, sizeof(*in));
		memcpy(start + sizeof(*in), e->hdr->op_in, oplen);
		cur_ent = e;
		PyEval_RestoreThread(q->ts);
		res = PyObject_CallFunction(g_dispatch, "nn", (Py_ssize_t)start,
					    (Py_ssize_t)in->len);
		if (res == NULL)
			PyErr_WriteUnraisable(g_dispatch);
		Py_XDECREF(res);
		q->ts = PyEval_SaveThread();
		cur_ent = NULL;
	}
	if (!e->replied) { /* a malformed request, or no answer: EIO */
		struct fuse_out_header *out = (void *)e->hdr->in_out;
		uint64_t unique = e->unique;

		q->unanswered++;
		memset(out, 0, sizeof(*out));
		out->len = sizeof(*out);
		out->error = -EIO;
		out->unique = unique;
		e->hdr->ent_in_out.payload_sz = 0;
	}
	e->unique = 0;
}

static int queue_setup(struct queue *q)
{
	struct io_uring_params p;
	struct io_uring_sqe *sqe;
	int rc;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
	p.cq_entries = 2 * (g_depth + 1);
	rc = io_uring_queue_init_params(g_depth + 1, &q->ring, &p);
	if (rc)
		return rc;
	q->ring_ok = 1;
	q->evfd = eventfd(0, EFD_CLOEXEC);
	if (q->evfd < 0)
		return -errno;
	for (int i = 0; i < g_depth; i++) {
		struct ent *e = &q->ents[i];
		char *m = map(SCRATCH + g_payload_sz);

		e->q = q;
		e->hdr = map(sizeof(struct req_header));
		if (!e->hdr || !m)
			return -ENOMEM;
		e->payload = m + SCRATCH;
		e->iov[0].iov_base = e->hdr;
		e->iov[0].iov_len = sizeof(struct req_header);
		e->iov[1].iov_base = e->payload;
		e->iov[1].iov_len = g_payload_sz;
		prep_cmd(q, e, CMD_REGISTER);
	}
	sqe = io_uring_get_sqe(&q->ring);
	io_uring_prep_poll_add(sqe, q->evfd, POLLIN);
	io_uring_sqe_set_data(sqe, NULL);
	return 0;
}

/* A queue thread waits for the next request as SCHED_IDLE and serves it as
 * SCHED_OTHER. Its answer wakes the requester while the queue thread still
 * runs; a CPU that runs only SCHED_IDLE threads counts as idle when the
 * scheduler places the woken task, so the requester stays on its CPU and
 * its next request comes back to the same queue. Waiting as SCHED_OTHER,
 * it is moved to the other vCPU about half the time, and every answer then
 * crosses vCPUs (docs/design.md). A thread without CAP_SYS_NICE or an
 * RLIMIT_NICE of 20 cannot come back from SCHED_IDLE: try it on a thread of
 * its own first. */
static void *idle_probe(void *arg)
{
	struct sched_param none = {0};
	int *ok = arg;

	*ok = sched_setscheduler(0, SCHED_IDLE, &none) == 0 &&
	      sched_setscheduler(0, SCHED_OTHER, &none) == 0;
	return NULL;
}

static int idle_wait_works(void)
{
	pthread_t t;
	int ok = 0;

	if (pthread_create(&t, NULL, idle_probe, &ok))
		return 0;
	pthread_join(t, NULL);
	return ok;
}

static void *queue_thread(void *arg)
{
	struct queue *q = arg;
	char name[16];
	cpu_set_t cpus;
	sigset_t all;
	PyGILState_STATE gil;
	int alive = g_depth, rc;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the trio thread's */
	snprintf(name, sizeof(name), "fuse-ring-%d", q->qid);
	pthread_setname_np(pthread_self(), name);
	CPU_ZERO(&cpus);
	CPU_SET(q->qid, &cpus);
	sched_setaffinity(0, sizeof(cpus), &cpus);

	rc = queue_setup(q);
	gil = PyGILState_Ensure();
	q->ts = PyEval_SaveThread();
	if (rc) {
		q->error = -rc;
		fprintf(stderr, "seldonfs: io_uring queue %d: %s\n", q->qid, strerror(q->error));
		goto out;
	}
	while (!atomic_load(&g_stop) && alive > 0) {
		struct io_uring_cqe *cqe;
		struct sched_param none = {0};
		unsigned head, n = 0;
		int stop = 0, fault = 0;

		if (g_idle_wait)
			sched_setscheduler(0, SCHED_IDLE, &none);
		rc = io_uring_submit_and_wait(&q->ring, 1);
		if (g_idle_wait)
			sched_setscheduler(0, SCHED_OTHER, &none);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			q->error = -rc;
			break;
		}
		io_uring_for_each_cqe(&q->ring, head, cqe) {
			struct ent *e = io_uring_cqe_get_data(cqe);

			n++;
			if (e == NULL) { /* the eventfd: stop */
				stop = 1;
			} else if (cqe->res == -EINTR || cqe->res == -EAGAIN) {
				prep_cmd(q, e, e->commit_id ? CMD_COMMIT_AND_FETCH : CMD_REGISTER);
			} else if (cqe->res < 0) {
				/* unmounted (ENOTCONN, ENODEV) or refused */
				if (cqe->res != -ENOTCONN && cqe->res != -ENODEV &&
				    cqe->res != -ECONNABORTED && !q->error)
					q->error = -cqe->res;
				alive--;
			} else {
				serve(q, e);
				prep_cmd(q, e, CMD_COMMIT_AND_FETCH);
				if (g_fault_at && q->qid == 0 && q->requests == g_fault_at)
					fault = 1;
			}
		}
		io_uring_cq_advance(&q->ring, n);
		if (fault) { /* the batch's answers go, then the thread */
			io_uring_submit(&q->ring);
			q->error = g_fault_errno;
			break;
		}
		if (stop)
			break;
	}
	if (q->error && !atomic_load(&g_stop))
		fprintf(stderr, "seldonfs: io_uring queue %d: %s\n", q->qid,
			strerror(q->error));
	/* unmounted, its commands end without an error: not ended */
	q->ended = q->error && !atomic_load(&g_stop);
out:
	if (!atomic_load(&g_stop))
		atomic_fetch_add(&g_queues_failed, 1);
	PyEval_RestoreThread(q->ts);
	PyGILState_Release(gil);
	return NULL;
}

static int start_queues(void)
{
	if (g_started)
		return 0;
	g_started = 1;
	g_idle_wait = idle_wait_works();
	g_payload_sz = MIN_PAYLOAD;
	if (g_max_write > g_payload_sz)
		g_payload_sz = g_max_write;
	if ((size_t)g_max_pages * 4096 > g_payload_sz)
		g_payload_sz = (size_t)g_max_pages * 4096;
	/* no waiting for them: this thread holds the GIL they need */
	for (int i = 0; i < g_nq; i++)
		if (pthread_create(&g_queues[i].tid, NULL, queue_thread, &g_queues[i]))
			g_queues[i].tid = 0;
	return 0;
}

/* ---- Python ---- */

static PyObject *py_install(PyObject *self, PyObject *args)
{
	unsigned long long se;
	PyObject *dispatch;
	int depth, rc;

	if (!PyArg_ParseTuple(args, "KOi|ki", &se, &dispatch, &depth, &g_fault_at, &g_fault_errno))
		return NULL;
	if (g_se != NULL) {
		PyErr_SetString(PyExc_RuntimeError, "installed already");
		return NULL;
	}
	if (se == 0 || depth < 1 || depth > MAX_DEPTH) {
		PyErr_SetString(PyExc_ValueError, "no session, or depth not in 1..64");
		return NULL;
	}
	g_nq = get_nprocs_conf(); /* the kernel wants a queue per possible CPU */
	g_queues = calloc(g_nq, sizeof(struct queue));
	if (g_queues == NULL)
		return PyErr_NoMemory();
	for (int i = 0; i < g_nq; i++) {
		g_queues[i].qid = i;
		g_queues[i].evfd = -1;
	}
	g_se = (struct fuse_session *)(uintptr_t)se;
	g_devfd = fuse_session_fd(g_se);
	g_depth = depth;
	Py_INCREF(dispatch);
	g_dispatch = dispatch;
	rc = fuse_session_custom_io(g_se, &hooks, g_devfd);
	if (rc) {
		errno = -rc;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	return PyLong_FromLong(g_nq);
}

static PyObject *py_probed(PyObject *self, PyObject *args)
{
	PyObject *names;
	Py_ssize_t n;

	if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &names))
		return NULL;
	n = PyTuple_GET_SIZE(names);
	if (n > MAX_PROBED) {
		PyErr_SetString(PyExc_ValueError, "at most 8 names");
		return NULL;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *b = PyTuple_GET_ITEM(names, i);

		if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) + 1 > (Py_ssize_t)sizeof(g_probed[0])) {
			PyErr_SetString(PyExc_ValueError, "names are bytes of at most 31");
			return NULL;
		}
	}
	for (Py_ssize_t i = 0; i < MAX_PROBED; i++) {
		g_probed_len[i] = 0;
		if (i < n) {
			PyObject *b = PyTuple_GET_ITEM(names, i);

			memcpy(g_probed[i], PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b) + 1);
			g_probed_len[i] = PyBytes_GET_SIZE(b) + 1;
		}
	}
	Py_RETURN_NONE;
}

static PyObject *py_absent(PyObject *self, PyObject *args)
{
	unsigned long long ino;
	unsigned int bits;
	_Atomic uint64_t *slot;

	if (!PyArg_ParseTuple(args, "KI", &ino, &bits))
		return NULL;
	if (ino >> 56)
		Py_RETURN_NONE;
	slot = absent_slot(ino);
	if (bits & 0xff)
		atomic_store_explicit(slot, (ino << 8) | (bits & 0xff), memory_order_release);
	else if (atomic_load_explicit(slot, memory_order_relaxed) >> 8 == ino)
		atomic_store_explicit(slot, 0, memory_order_release);
	Py_RETURN_NONE;
}

static PyObject *py_stop(PyObject *self, PyObject *args)
{
	atomic_store(&g_stop, 1);
	if (!g_started)
		Py_RETURN_NONE;
	Py_BEGIN_ALLOW_THREADS
	for (int i = 0; i < g_nq; i++) {
		uint64_t one = 1;

		if (g_queues[i].evfd >= 0 &&
		    write(g_queues[i].evfd, &one, sizeof(one)) < 0)
			perror("seldonfs: io_uring stop");
	}
	for (int i = 0; i < g_nq; i++) {
		if (g_queues[i].tid)
			pthread_join(g_queues[i].tid, NULL);
		g_queues[i].tid = 0;
		/* cancels the ring's commands; the entries' memory stays
		 * mapped until the process ends */
		if (g_queues[i].ring_ok)
			io_uring_queue_exit(&g_queues[i].ring);
		g_queues[i].ring_ok = 0;
	}
	Py_END_ALLOW_THREADS
	Py_RETURN_NONE;
}

/* Requests come over /dev/fuse now, not just FORGETs: the kernel did not
 * take io_uring, or a queue ended (its requests then wait for nothing, or
 * before all queues are up the kernel keeps to /dev/fuse). */
static PyObject *py_degraded(PyObject *self, PyObject *args)
{
	return PyBool_FromLong((atomic_load(&g_init_seen) && !g_accepted) ||
			       atomic_load(&g_queues_failed) > 0);
}

static PyObject *py_stats(PyObject *self, PyObject *args)
{
	unsigned long ring = 0, unanswered = 0;
	int error = 0;
	PyObject *ended = PyList_New(0);

	if (ended == NULL)
		return NULL;
	for (int i = 0; i < g_nq; i++) {
		ring += g_queues[i].requests;
		unanswered += g_queues[i].unanswered;
		if (!error)
			error = g_queues[i].error;
		if (g_queues[i].ended) {
			PyObject *qid = PyLong_FromLong(i);

			if (qid == NULL || PyList_Append(ended, qid)) {
				Py_XDECREF(qid);
				Py_DECREF(ended);
				return NULL;
			}
			Py_DECREF(qid);
		}
	}
	return Py_BuildValue("{s:i,s:i,s:i,s:i,s:k,s:k,s:k,s:k,s:i,s:N}",
		"queues", g_started ? g_nq : 0, "idle_wait", g_idle_wait, "offered", g_offered,
		"accepted", g_accepted, "ring_requests", ring,
		"dev_requests", (unsigned long)atomic_load(&g_dev_requests),
		"absent_answers", (unsigned long)atomic_load(&g_absent_answers),
		"unanswered", unanswered, "error", error, "ended", ended);
}

static PyMethodDef methods[] = {
	{"install", py_install, METH_VARARGS,
	 "install(session_ptr, dispatch, depth[, fault_at, fault_errno]) -> number of "
	 "queues: the hooks go on the session, the queues start at FUSE_INIT if the "
	 "kernel offers io_uring; dispatch(addr, size) runs one request on a queue "
	 "thread; queue 0 ends after its request number fault_at (faults.py)"},
	{"probed", py_probed, METH_VARARGS, "probed(names): the xattr names of bits 0, 1... "
	 "that a queue thread answers ENODATA itself where `absent` says so"},
	{"absent", py_absent, METH_VARARGS, "absent(ino, bits): the probed xattrs inode `ino` "
	 "lacks (0: none known); with the GIL held"},
	{"stop", py_stop, METH_NOARGS, "stop the queue threads and close their rings"},
	{"degraded", py_degraded, METH_NOARGS, "whether requests come over /dev/fuse "
	 "(the kernel did not take io_uring, or a queue ended)"},
	{"stats", py_stats, METH_NOARGS, "queues, idle_wait, offered, accepted, ring_requests, "
	 "dev_requests, absent_answers, unanswered, error, ended (the queues whose thread ended)"},
	{NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_uring",
	"FUSE over io_uring for a pyfuse3 session (see _uring.c).", -1, methods};

PyMODINIT_FUNC PyInit__uring(void)
{
	return PyModule_Create(&module);
}
