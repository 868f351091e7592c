/*
** Connections: the two ends of mp.Pipe. Each direction is a ring in shared
** memory (ring.h) -- a send is a copy and a store, no system call -- plus a
** pipe(2) used as doorbell and as the kernel's record of who holds which end:
** every copy of a sending end holds the doorbell's write fd, every copy of a
** receiving end its read fd. So recv sees EOF (POLLHUP) exactly when every
** copy of the peer end, in every process, is closed, and send sees EPIPE when
** no copy of the receiving end is left. The doorbell is written only while
** the receiver sleeps in poll() (or after fileno() was asked for, see there).
** Engine code: no Lua; functions return 0 or an errno value.
*/
#ifndef MP_CONN_H
#define MP_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define MP_CONN_EOF (-1)                   /* the peer is gone and nothing is left */
#define MP_CONN_RING ((size_t)1 << 20)     /* bytes per direction; larger messages stream */

typedef struct mp_conn {
  mp_ring rx;          /* what this end receives (rx.hdr NULL: send-only) */
  mp_ring tx;          /* what this end sends (tx.hdr NULL: receive-only) */
  int sticky;          /* fileno() handed out: keep the doorbell rung */
  int hidden;          /* its doorbells are registered with mp_fork_hide_from_server */
} mp_conn;

/* Makes the two ends. Duplex: both send and receive. Otherwise a receives, b sends. */
int mp_conn_pipe(mp_conn *a, mp_conn *b, int duplex);

/*
** An end whose rings were attached here (mp_ring_attach: received from
** another process): registers its doorbells like mp_conn_pipe's. 0 or ENOMEM.
*/
int mp_conn_adopt(mp_conn *c);

/* Unmaps and closes this process's copies (idempotent). */
void mp_conn_close(mp_conn *c);

static inline int mp_conn_readable(const mp_conn *c) { return c->rx.hdr != NULL; }
static inline int mp_conn_writable(const mp_conn *c) { return c->tx.hdr != NULL; }

/* Sends one message. 0, EPIPE, EINTR (nothing sent: check interrupts, call again). */
int mp_conn_send(mp_conn *c, const void *p, size_t n);

/*
** Takes the next message, waiting until `deadline`: 0 with the receive lock
** held and *m describing it (then mp_conn_recv_end, or mp_ring_read_stream on
** c->rx first when m->streamed), MP_CONN_EOF, ETIMEDOUT or EINTR.
*/
int mp_conn_recv_begin(mp_conn *c, double deadline, mp_ring_msg *m);
void mp_conn_recv_end(mp_conn *c, mp_ring_msg *m);

/* 0 when a message or EOF is there to read, ETIMEDOUT, EINTR. */
int mp_conn_poll(mp_conn *c, double deadline);

/*
** The fd an event loop can poll (the doorbell's read end; for a send-only end
** the write end). Asking for it switches the receiving side to signalled
** mode: from then on every message sent writes one doorbell byte and every
** message received takes one, so the fd polls readable while messages sent
** after the call are waiting, and at EOF.
*/
int mp_conn_fileno(mp_conn *c);

/* For mp.wait: register as a sleeper (returns whether a message is there), unregister. */
int mp_conn_wait_begin(mp_conn *c);
void mp_conn_wait_end(mp_conn *c);

#endif
