#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "mclient.h"
#include "siphash.h"

/* Handshake phases. */
enum { P_CONNECT, P_HELLO, P_WELCOME, P_READY };

#define HS_MAX 256          /* no handshake record is longer */

void mp_client_init(mp_client *c) {
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

void mp_client_close(mp_client *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  mp_rbuf_free(&c->rb);
  c->phase = P_CONNECT;
}

/* Sends a small handshake frame whole: it fits any socket buffer. */
static int send_small(mp_client *c, const char *buf, size_t n, double deadline) {
  size_t done = 0;
  int rc;
  while ((rc = mp_frame_send(c->fd, buf, n, &done, deadline)) == EINTR) {}
  return rc;
}

int mp_client_connect(mp_client *c, const mp_addr *a, const void *key, size_t keylen,
                      const unsigned char ident[MP_AUTH_IDENT], double deadline) {
  int rc;
  mp_frame f;
  switch (c->phase) {
    case P_CONNECT:
      rc = mp_sock_connect(a, deadline, &c->fd);
      if (rc != 0) return rc;
      c->phase = P_HELLO;
      /* fall through */
    case P_HELLO: {
      rc = mp_frame_recv(c->fd, &c->rb, deadline, 0, HS_MAX, &f);
      if (rc == EMSGSIZE) return EPROTO;
      if (rc != 0) return rc;
      if (f.kind != MP_HS_HELLO || f.len != MP_HELLO_LEN ||
          memcmp(f.data, MP_AUTH_MAGIC, MP_AUTH_MAGICLEN) != 0)
        return EPROTO;
      char msg[MP_FRAME_HDR + MP_AUTH_LEN];
      unsigned char *p = (unsigned char *)msg + MP_FRAME_HDR;
      mp_auth_digest(key, keylen, MP_ROLE_CLIENT, (const unsigned char *)f.data + MP_AUTH_MAGICLEN, p);
      mp_frame_consume(&c->rb, &f);
      if ((rc = mp_random_bytes(c->nonce, sizeof c->nonce)) != 0) return rc;
      memcpy(p + MP_AUTH_DIGEST, c->nonce, MP_AUTH_NONCE);
      memcpy(p + MP_AUTH_DIGEST + MP_AUTH_NONCE, ident, MP_AUTH_IDENT);
      mp_frame_header(msg, MP_AUTH_LEN, 0, MP_HS_AUTH);
      if ((rc = send_small(c, msg, sizeof msg, deadline)) != 0) return rc;
      c->phase = P_WELCOME;
    }
      /* fall through */
    case P_WELCOME:
      rc = mp_frame_recv(c->fd, &c->rb, deadline, 0, HS_MAX, &f);
      if (rc == EMSGSIZE) return EPROTO;
      if (rc == MP_FRAME_EOF) return EACCES;       /* refused without a word */
      if (rc != 0) return rc;
      if (f.kind == MP_HS_FAILURE) return EACCES;
      if (f.kind != MP_HS_WELCOME || f.len != MP_WELCOME_LEN) return EPROTO;
      {
        const unsigned char *p = (const unsigned char *)f.data;
        if (!mp_auth_check(key, keylen, MP_ROLE_SERVER, c->nonce, p)) return EPROTO;
        p += MP_AUTH_DIGEST;
        c->server_pid = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        memcpy(c->token, p + 4, MP_AUTH_TOKEN);
      }
      mp_frame_consume(&c->rb, &f);
      c->phase = P_READY;
      return 0;
    default:
      return 0;
  }
}

int mp_client_send(mp_client *c, const char *buf, size_t n, double deadline) {
  if (c->broken || c->fd < 0) return EPIPE;
  size_t done = 0;
  for (;;) {
    int rc = mp_frame_send(c->fd, buf, n, &done, deadline);
    if (rc == 0) return 0;
    if (rc == EINTR) {
      if (done == 0) return EINTR;
      /* Started: finish it before anything else may run (the buffer is shared). */
      continue;
    }
    if (done > 0) c->broken = 1;
    return rc;
  }
}

int mp_client_recv(mp_client *c, uint32_t seq, double deadline, mp_frame *f) {
  if (c->broken || c->fd < 0) return EPIPE;
  for (;;) {
    int rc = mp_frame_recv(c->fd, &c->rb, deadline, MP_RECV_SPIN, MP_FRAME_MAX, f);
    if (rc != 0) return rc;
    if (f->seq == seq) return 0;
    mp_frame_consume(&c->rb, f);          /* the late reply of a call that gave up */
  }
}

void mp_client_consume(mp_client *c, const mp_frame *f) {
  mp_frame_consume(&c->rb, f);
}
