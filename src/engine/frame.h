/*
** Length-framed messages over a stream socket, as the Manager's client and
** server exchange them. A frame is a 12-byte header -- payload length (u32),
** sequence number (u32), kind (u8), 3 zero bytes, little-endian -- then the
** payload (a serializer message, or a handshake record).
**
** Receiving goes through a buffer that reads in bulk: one recv() often brings
** several frames, and a frame larger than the buffer grows it to fit.
** Sending loops over partial writes with MSG_NOSIGNAL (a gone peer is EPIPE,
** never SIGPIPE). Waits use absolute deadlines and return EINTR at the end of
** every slice (clock.h), so that the caller can run signal handlers and Ctrl-C
** works. Engine code: no Lua; functions return 0 or an errno value.
*/
#ifndef MP_FRAME_H
#define MP_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define MP_FRAME_HDR 12
#define MP_FRAME_MAX ((size_t)UINT32_MAX)   /* payload bytes */
#define MP_FRAME_EOF (-1)                    /* the peer closed the connection */

/* Frame kinds. */
enum {
  MP_HS_HELLO = 1, MP_HS_AUTH, MP_HS_WELCOME, MP_HS_FAILURE,   /* handshake (auth.h) */
  MP_REQ_CALL = 10,    /* a request that gets a reply with the same sequence number */
  MP_REQ_SEND,         /* a request that gets none (seq 0) */
  MP_REQ_PING,         /* answered by the server engine itself with MP_REP_PONG */
  MP_REP_OK = 20,      /* the results */
  MP_REP_RAISE,        /* an error object to raise as it is */
  MP_REP_USAGE,        /* a misuse message, raised as a plain error at the caller */
  MP_REP_PONG
};

typedef struct mp_frame {
  uint32_t seq;
  int kind;
  const char *data;    /* the payload, inside the receive buffer */
  size_t len;
} mp_frame;

typedef struct mp_rbuf {
  char *data;
  size_t cap, start, end;    /* unread bytes are data[start .. end) */
} mp_rbuf;

/* Writes a header for a payload of len bytes at p. */
void mp_frame_header(char *p, size_t len, uint32_t seq, int kind);

/*
** The next complete frame in rb: 0 with *f set (valid until rb changes),
** EAGAIN when more bytes are needed, EMSGSIZE when its length is over max.
*/
int mp_frame_parse(mp_rbuf *rb, size_t max, mp_frame *f);

/* Drops the frame just parsed from rb. */
void mp_frame_consume(mp_rbuf *rb, const mp_frame *f);

/*
** Reads what fd has (until EAGAIN or the buffer is full): 0 when some bytes
** came, EAGAIN when none, MP_FRAME_EOF, ENOMEM or the socket's errno.
*/
int mp_rbuf_fill(int fd, mp_rbuf *rb);

void mp_rbuf_free(mp_rbuf *rb);

/*
** Waits for and parses the next frame: 0 with *f, MP_FRAME_EOF, ETIMEDOUT,
** EINTR (slice end or signal: call again), EMSGSIZE or the socket's errno.
** For `spin` seconds it looks without sleeping first (see MP_RECV_SPIN).
*/
int mp_frame_recv(int fd, mp_rbuf *rb, double deadline, double spin, size_t max, mp_frame *f);

/*
** How long a caller waiting for a reply keeps looking before it sleeps in
** poll(). Waking a process that sleeps on another CPU costs 20 to 50 us on
** this kind of (virtual) machine -- ten times the round trip itself -- and a
** manager's answer usually comes within a few microseconds. Between looks the
** caller yields its CPU, so a server that shares it is not held up.
*/
#define MP_RECV_SPIN 50e-6

/*
** Sends buf[*done .. n), advancing *done: 0 once all is sent, EINTR (call
** again with the same *done), ETIMEDOUT, EPIPE, or the socket's errno.
*/
int mp_frame_send(int fd, const char *buf, size_t n, size_t *done, double deadline);

/* Waits until fd polls for `events` (POLLIN/POLLOUT): 0, EINTR (slice end or signal), ETIMEDOUT. */
int mp_fd_wait(int fd, short events, double deadline);

#endif
